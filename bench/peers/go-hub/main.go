// go-hub: the classic gorilla/websocket hub, as a reference peer for Herald's benchmarks.
//
// The design the Go world copies: one hub goroutine owning the client set, fed by register,
// unregister and broadcast channels; per client a 256-message send buffer, a read pump and a
// write pump that joins whatever is queued into one frame (newline separated); ping every 54 s,
// pong wait 60 s; a client whose buffer is full is dropped. Herald's benchmark protocol is
// spoken just enough to be measured the same way: a welcome frame on connect, `subscribed`
// in answer to a subscribe, and `POST /api/topics/{topic}` answering 201 with the stored
// notification (a per-topic offset), broadcast to every client.
//
// Build (Debian: golang-go, golang-github-gorilla-websocket-dev):
//   GOPATH=/usr/share/gocode GO111MODULE=off go build -o go-hub main.go
// Run: ./go-hub -addr 127.0.0.1:3999
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"log"
	"math/rand"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

const (
	writeWait      = 10 * time.Second
	pongWait       = 60 * time.Second
	pingPeriod     = (pongWait * 9) / 10
	maxMessageSize = 64 * 1024
	sendBuffer     = 256
)

var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 1024,
	CheckOrigin:     func(r *http.Request) bool { return true },
}

type client struct {
	hub  *hub
	conn *websocket.Conn
	send chan []byte
}

type hub struct {
	clients    map[*client]bool
	broadcast  chan []byte
	register   chan *client
	unregister chan *client
}

func newHub() *hub {
	return &hub{
		clients:    make(map[*client]bool),
		broadcast:  make(chan []byte, 1024),
		register:   make(chan *client),
		unregister: make(chan *client),
	}
}

func (h *hub) run() {
	for {
		select {
		case c := <-h.register:
			h.clients[c] = true
		case c := <-h.unregister:
			if _, ok := h.clients[c]; ok {
				delete(h.clients, c)
				close(c.send)
			}
		case msg := <-h.broadcast:
			for c := range h.clients {
				select {
				case c.send <- msg:
				default:
					close(c.send)
					delete(h.clients, c)
				}
			}
		}
	}
}

func (c *client) readPump() {
	defer func() {
		c.hub.unregister <- c
		c.conn.Close()
	}()
	c.conn.SetReadLimit(maxMessageSize)
	c.conn.SetReadDeadline(time.Now().Add(pongWait))
	c.conn.SetPongHandler(func(string) error { c.conn.SetReadDeadline(time.Now().Add(pongWait)); return nil })
	for {
		_, msg, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		if bytes.Contains(msg, []byte(`"subscribe"`)) {
			select {
			case c.send <- []byte(`{"type":"subscribed"}`):
			default:
			}
		}
	}
}

func (c *client) writePump() {
	ticker := time.NewTicker(pingPeriod)
	defer func() {
		ticker.Stop()
		c.conn.Close()
	}()
	newline := []byte{'\n'}
	for {
		select {
		case msg, ok := <-c.send:
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if !ok {
				c.conn.WriteMessage(websocket.CloseMessage, []byte{})
				return
			}
			w, err := c.conn.NextWriter(websocket.TextMessage)
			if err != nil {
				return
			}
			w.Write(msg)
			// Join whatever else is queued into the same frame.
			n := len(c.send)
			for i := 0; i < n; i++ {
				w.Write(newline)
				w.Write(<-c.send)
			}
			if err := w.Close(); err != nil {
				return
			}
		case <-ticker.C:
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if err := c.conn.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}

func serveWs(h *hub, w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := &client{hub: h, conn: conn, send: make(chan []byte, sendBuffer)}
	h.register <- c
	c.send <- []byte(`{"type":"welcome"}`)
	go c.writePump()
	go c.readPump()
}

type notification struct {
	Type     string `json:"type,omitempty"`
	ID       string `json:"id"`
	Topic    string `json:"topic"`
	Epoch    string `json:"epoch"`
	Offset   uint64 `json:"offset"`
	Time     int64  `json:"time"`
	Body     string `json:"body"`
	Priority int    `json:"priority"`
}

const alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

func randomID() string {
	b := make([]byte, 12)
	for i := range b {
		b[i] = alphabet[rand.Intn(len(alphabet))]
	}
	return string(b)
}

// publisher assigns per-topic offsets and hands frames to the hub in offset order.
type publisher struct {
	mu      sync.Mutex
	offsets map[string]uint64
	hub     *hub
}

func (p *publisher) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	topic := strings.TrimPrefix(r.URL.Path, "/api/topics/")
	body, err := io.ReadAll(io.LimitReader(r.Body, 16*1024+1))
	if err != nil || len(body) == 0 || len(body) > 16*1024 {
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	n := notification{ID: randomID(), Topic: topic, Epoch: "go", Time: time.Now().UnixMilli(), Body: string(body), Priority: 3}
	p.mu.Lock()
	p.offsets[topic]++
	n.Offset = p.offsets[topic]
	n.Type = "notification"
	frame, _ := json.Marshal(n)
	p.hub.broadcast <- frame
	p.mu.Unlock()
	n.Type = ""
	reply, _ := json.Marshal(n)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	w.Write(reply)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:3999", "listen address")
	flag.Parse()
	h := newHub()
	go h.run()
	p := &publisher{offsets: make(map[string]uint64), hub: h}
	http.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) { serveWs(h, w, r) })
	http.HandleFunc("/api/topics/", p.serveHTTP)
	http.HandleFunc("/api/health", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"status":"ok"}`)) })
	log.Printf("go-hub listening on %s", *addr)
	log.Fatal(http.ListenAndServe(*addr, nil))
}
