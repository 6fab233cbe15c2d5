// goapps: Go programs through the redirect (lab/conformance/apps.py), run by bench/peer.sh.
// Go's own net/http and io.Copy, as services written in Go use them: io.Copy between two
// *net.TCPConn is splice(2) on Linux, the path of the splice-read defect.
//
//	goapps http-server --port P --bytes N          serve GET /body (N random bytes) and GET /sha
//	goapps http-client --port P --requests K       fetch /sha, then /body K times over keep-alive
//	goapps echo --port P                           an upstream that echoes each connection
//	goapps proxy-client --upstream-port P --bytes N --deadline S
//	                                               an io.Copy proxy to the upstream in this process,
//	                                               N random bytes through it and back
//
// The clients print one JSON object: what lab/conformance/apps.py compares.
package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"sync"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: goapps http-server|http-client|echo|proxy-client [flags]")
	}
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	port := flags.Int("port", 0, "the server's port")
	upstream := flags.Int("upstream-port", 0, "the echo upstream's port")
	size := flags.Int("bytes", 4<<20, "body or payload bytes")
	requests := flags.Int("requests", 8, "requests over one keep-alive connection")
	deadline := flags.Duration("deadline", 20*time.Second, "give up after this long")
	flags.Parse(os.Args[2:])
	switch os.Args[1] {
	case "http-server":
		httpServer(*port, *size)
	case "http-client":
		report(httpClient(*port, *requests, *deadline))
	case "echo":
		echo(*port)
	case "proxy-client":
		report(proxyClient(*upstream, *size, *deadline))
	default:
		fail("unknown command " + os.Args[1])
	}
}

func fail(why string) {
	fmt.Fprintln(os.Stderr, "goapps:", why)
	os.Exit(2)
}

func report(result map[string]any) {
	out, _ := json.Marshal(result)
	fmt.Println(string(out))
}

func randomBytes(n int) []byte {
	buf := make([]byte, n)
	if _, err := rand.Read(buf); err != nil {
		fail(err.Error())
	}
	return buf
}

func digest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// ---------------------------------------------------------------------------- HTTP

func httpServer(port, size int) {
	body := randomBytes(size)
	sha := digest(body)
	http.HandleFunc("/body", func(w http.ResponseWriter, r *http.Request) { w.Write(body) })
	http.HandleFunc("/sha", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, sha) })
	fail(http.ListenAndServe(fmt.Sprintf("127.0.0.1:%d", port), nil).Error())
}

func httpClient(port, requests int, deadline time.Duration) map[string]any {
	client := &http.Client{Timeout: deadline}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	newConnections := 0
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if !info.Reused {
			newConnections++
		}
	}}
	get := func(path string) ([]byte, int, error) {
		req, _ := http.NewRequest("GET", base+path, nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
		resp, err := client.Do(req)
		if err != nil {
			return nil, 0, err
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		return data, resp.StatusCode, err
	}
	result := map[string]any{"statuses": []int{}, "intact": []bool{}}
	sha, status, err := get("/sha")
	if err != nil || status != 200 {
		result["error"] = fmt.Sprintf("GET /sha: status %d, %v", status, err)
		return result
	}
	statuses, intact, total := []int{}, []bool{}, 0
	for i := 0; i < requests; i++ {
		body, status, err := get("/body")
		if err != nil {
			result["error"] = fmt.Sprintf("GET /body #%d: %v", i+1, err)
			break
		}
		statuses = append(statuses, status)
		intact = append(intact, digest(body) == string(sha))
		total += len(body)
	}
	result["statuses"], result["intact"], result["bytes"] = statuses, intact, total
	result["connections"] = newConnections
	return result
}

// ---------------------------------------------------------------------------- io.Copy proxy

func echo(port int) {
	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		fail(err.Error())
	}
	for {
		conn, err := listener.Accept()
		if err != nil {
			fail(err.Error())
		}
		go func(conn net.Conn) {
			io.Copy(conn, conn)
			conn.(*net.TCPConn).CloseWrite()
		}(conn)
	}
}

// counted is what one direction of the proxy moved, readable while its io.Copy still runs.
type counted struct {
	mu     sync.Mutex
	copied int64
	done   bool
}

func (c *counted) set(n int64, done bool) {
	c.mu.Lock()
	c.copied, c.done = n, done
	c.mu.Unlock()
}

func (c *counted) state() map[string]any {
	c.mu.Lock()
	defer c.mu.Unlock()
	return map[string]any{"copied": c.copied, "done": c.done}
}

// proxy copies one accepted connection to the upstream and back with io.Copy: *net.TCPConn's
// ReadFrom, which splices socket to socket on Linux.
func proxy(listener net.Listener, upstream int, up, down *counted) {
	client, err := listener.Accept()
	if err != nil {
		return
	}
	server, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", upstream))
	if err != nil {
		client.Close()
		return
	}
	go func() {
		n, _ := io.Copy(server, client)
		up.set(n, true)
		server.(*net.TCPConn).CloseWrite()
	}()
	go func() {
		n, _ := io.Copy(client, server)
		down.set(n, true)
		client.(*net.TCPConn).CloseWrite()
	}()
}

func proxyClient(upstream, size int, deadline time.Duration) map[string]any {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err.Error())
	}
	up, down := &counted{}, &counted{}
	go proxy(listener, upstream, up, down)
	conn, err := net.Dial("tcp", listener.Addr().String())
	if err != nil {
		fail(err.Error())
	}
	payload := randomBytes(size)
	conn.SetDeadline(time.Now().Add(deadline))
	go func() {
		conn.Write(payload)
		conn.(*net.TCPConn).CloseWrite()
	}()
	echoed, err := io.ReadAll(conn)
	result := map[string]any{
		"sent": size, "echoed": len(echoed), "intact": digest(echoed) == digest(payload),
		"finished": err == nil,
		"proxy":    map[string]any{"client_to_upstream": up.state(), "upstream_to_client": down.state()},
	}
	if err != nil {
		result["error"] = err.Error()
	}
	return result
}
