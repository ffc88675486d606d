//! Signed user tokens (JWT): who a browser user is and which topics they may read and
//! publish to, for a short while.
//!
//! Exactly one algorithm is accepted, the configured one: HS256 with Herald's secret (Herald
//! and the customer's backend share it), or RS256 / ES256 with an identity provider's public
//! key. A token whose header names any other algorithm is refused before its signature is
//! looked at, which closes the classic holes: `alg: none`, and an RS256 public key used as an
//! HS256 secret.
//!
//! Claims: `sub` (the user id), `exp` (required), optional `iat`, `aud` (checked when an
//! audience is configured), `iss` (checked when an issuer is configured), and the grants:
//! `read` and `publish`, lists of topic patterns (`["general", "team-*"]`).

use super::scope::{Grants, Pattern};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest user id.
pub const MAX_SUBJECT_LEN: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// Unix seconds.
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default)]
    pub read: Vec<Pattern>,
    #[serde(default)]
    pub publish: Vec<Pattern>,
}

impl Claims {
    pub fn grants(&self) -> Grants {
        Grants {
            read: self.read.clone(),
            publish: self.publish.clone(),
            admin: Vec::new(),
        }
    }
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Well formed and correctly signed, but past its `exp`.
    Expired,
    /// Anything else; the reason is safe to show (it never echoes the token).
    Invalid(&'static str),
}

/// Which algorithm tokens are signed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenAlgorithm {
    Hs256,
    Rs256,
    Es256,
}

/// Verifies (and, with a secret, mints) tokens.
pub struct Tokens {
    decoding: DecodingKey,
    /// Only with an HS256 secret: Herald cannot sign with someone else's public key.
    encoding: Option<EncodingKey>,
    validation: Validation,
    algorithm: Algorithm,
    audience: Option<String>,
    issuer: Option<String>,
}

impl Tokens {
    /// HS256 with a shared secret (at least 32 bytes).
    pub fn hs256(
        secret: &[u8],
        audience: Option<String>,
        issuer: Option<String>,
        leeway_secs: u64,
    ) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err("the token secret must be at least 32 bytes".into());
        }
        Ok(Self::new(
            Algorithm::HS256,
            DecodingKey::from_secret(secret),
            Some(EncodingKey::from_secret(secret)),
            audience,
            issuer,
            leeway_secs,
        ))
    }

    /// RS256 or ES256 with an identity provider's public key (PEM).
    pub fn public_key(
        algorithm: TokenAlgorithm,
        pem: &[u8],
        audience: Option<String>,
        issuer: Option<String>,
        leeway_secs: u64,
    ) -> Result<Self, String> {
        let (alg, key) = match algorithm {
            TokenAlgorithm::Rs256 => (Algorithm::RS256, DecodingKey::from_rsa_pem(pem)),
            TokenAlgorithm::Es256 => (Algorithm::ES256, DecodingKey::from_ec_pem(pem)),
            TokenAlgorithm::Hs256 => {
                return Err("HS256 takes a secret (--token-secret), not a public key".into())
            }
        };
        let key = key.map_err(|e| format!("reading the public key: {e}"))?;
        Ok(Self::new(alg, key, None, audience, issuer, leeway_secs))
    }

    fn new(
        algorithm: Algorithm,
        decoding: DecodingKey,
        encoding: Option<EncodingKey>,
        audience: Option<String>,
        issuer: Option<String>,
        leeway_secs: u64,
    ) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &issuer {
            validation.set_issuer(&[iss]);
        }
        Self {
            decoding,
            encoding,
            validation,
            algorithm,
            audience,
            issuer,
        }
    }

    pub fn can_mint(&self) -> bool {
        self.encoding.is_some()
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenRefusal> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenRefusal::Expired,
                ErrorKind::InvalidSignature => TokenRefusal::Invalid("bad signature"),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenRefusal::Invalid("algorithm not accepted")
                }
                ErrorKind::InvalidAudience => TokenRefusal::Invalid("wrong audience"),
                ErrorKind::InvalidIssuer => TokenRefusal::Invalid("wrong issuer"),
                ErrorKind::ImmatureSignature => TokenRefusal::Invalid("not valid yet"),
                ErrorKind::MissingRequiredClaim(_) => {
                    TokenRefusal::Invalid("missing a required claim (sub, exp)")
                }
                ErrorKind::Json(_) => TokenRefusal::Invalid("claims are not the expected shape"),
                _ => TokenRefusal::Invalid("malformed token"),
            })?;
        let sub = &data.claims.sub;
        if sub.is_empty() || sub.len() > MAX_SUBJECT_LEN || sub.chars().any(char::is_control) {
            return Err(TokenRefusal::Invalid(
                "sub must be 1 to 128 printable characters",
            ));
        }
        Ok(data.claims)
    }

    /// Signs a token for `sub` with `grants`, valid for `ttl_secs`. Only with a secret.
    pub fn mint(&self, sub: &str, grants: &Grants, ttl_secs: u64) -> Result<Claims, String> {
        let Some(_) = &self.encoding else {
            return Err(
                "tokens are verified with a public key here; the identity provider mints them"
                    .into(),
            );
        };
        if sub.is_empty() || sub.len() > MAX_SUBJECT_LEN || sub.chars().any(char::is_control) {
            return Err(format!(
                "user must be 1 to {MAX_SUBJECT_LEN} printable characters"
            ));
        }
        let now = super::keys::unix_now();
        Ok(Claims {
            sub: sub.to_owned(),
            exp: now + ttl_secs as i64,
            iat: Some(now),
            aud: self.audience.clone(),
            iss: self.issuer.clone(),
            read: grants.read.clone(),
            publish: grants.publish.clone(),
        })
    }

    /// The signed form of `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        let key = self.encoding.as_ref().ok_or("no signing secret")?;
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, key).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn tokens() -> Tokens {
        Tokens::hs256(SECRET, Some("herald".into()), None, 0).unwrap()
    }

    fn claims(exp_in: i64) -> Claims {
        Claims {
            sub: "ana".into(),
            exp: super::super::keys::unix_now() + exp_in,
            iat: None,
            aud: Some("herald".into()),
            iss: None,
            read: vec![Pattern::parse("general").unwrap()],
            publish: vec![],
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn a_signed_token_round_trips() {
        let t = tokens();
        let c = claims(60);
        let signed = t.sign(&c).unwrap();
        assert_eq!(t.verify(&signed).unwrap(), c);
        let minted = t.mint("bo", &c.grants(), 60).unwrap();
        assert_eq!(t.verify(&t.sign(&minted).unwrap()).unwrap().sub, "bo");
    }

    #[test]
    fn every_bad_token_class_is_refused() {
        let t = tokens();
        // Expired.
        assert_eq!(
            t.verify(&t.sign(&claims(-10)).unwrap()),
            Err(TokenRefusal::Expired)
        );
        // Forged: signed with another secret.
        let other = Tokens::hs256(
            b"another-secret-another-secret-xx",
            Some("herald".into()),
            None,
            0,
        )
        .unwrap();
        assert!(matches!(
            t.verify(&other.sign(&claims(60)).unwrap()),
            Err(TokenRefusal::Invalid(_))
        ));
        // Wrong audience.
        let mut c = claims(60);
        c.aud = Some("someone-else".into());
        assert_eq!(
            t.verify(&t.sign(&c).unwrap()),
            Err(TokenRefusal::Invalid("wrong audience"))
        );
        // alg: none, with the signature stripped.
        let body = b64(&serde_json::to_string(&claims(60)).unwrap());
        let none = format!("{}.{body}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        assert!(matches!(t.verify(&none), Err(TokenRefusal::Invalid(_))));
        // HS384 (a different HMAC) with the right secret: the algorithm is pinned.
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims(60),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            t.verify(&hs384),
            Err(TokenRefusal::Invalid("algorithm not accepted"))
        );
        // Malformed.
        for junk in ["", "a.b.c", "not a token", "x.y", &"a".repeat(5000)] {
            assert!(
                matches!(t.verify(junk), Err(TokenRefusal::Invalid(_))),
                "{junk:?}"
            );
        }
        // No sub, or an empty one.
        let mut c = claims(60);
        c.sub = String::new();
        assert!(matches!(
            t.verify(&t.sign(&c).unwrap()),
            Err(TokenRefusal::Invalid(_))
        ));
    }

    #[test]
    fn a_public_key_verifier_refuses_hs256_signed_with_that_key() {
        // An ES256 verifier, and an attacker who signs HS256 using the public key's PEM as
        // the HMAC secret: refused on the algorithm, before any key is used.
        let pem = include_bytes!("../../tests/fixtures/es256-public.pem");
        let t = Tokens::public_key(TokenAlgorithm::Es256, pem, None, None, 0).unwrap();
        assert!(!t.can_mint());
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(60),
            &EncodingKey::from_secret(pem),
        )
        .unwrap();
        assert_eq!(
            t.verify(&forged),
            Err(TokenRefusal::Invalid("algorithm not accepted"))
        );
        assert!(t.mint("ana", &Grants::default(), 60).is_err());
        // A token the identity provider signed with its private key is accepted.
        let private = include_bytes!("../../tests/fixtures/es256-private.pem");
        let real = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims(60),
            &EncodingKey::from_ec_pem(private).unwrap(),
        )
        .unwrap();
        assert_eq!(t.verify(&real).unwrap().sub, "ana");
        // And RS256 the same way.
        let rs = Tokens::public_key(
            TokenAlgorithm::Rs256,
            include_bytes!("../../tests/fixtures/rs256-public.pem"),
            None,
            None,
            0,
        )
        .unwrap();
        let real = jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &claims(60),
            &EncodingKey::from_rsa_pem(include_bytes!("../../tests/fixtures/rs256-private.pem"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(rs.verify(&real).unwrap().sub, "ana");
        assert!(matches!(rs.verify(&forged), Err(TokenRefusal::Invalid(_))));
    }
}
