// Benchmark peer: the article's Go server, standard library only.
//
//	GET  /      -> 200 text/plain "Hello, cloud native!"
//	POST /echo  -> the JSON body decoded into a generic value (any) and re-encoded.
//
// Port: -port N (or --port N, or a bare N), else env PORT, else 8080.
// Threads: GOMAXPROCS as usual (defaults to the CPUs in the affinity mask);
// env WORKERS, when set, overrides it so every peer takes the same knob.
package main

import (
	"encoding/json"
	"flag"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
)

const maxBody = 1 << 20

var hello = []byte("Hello, cloud native!")

func root(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write(hello)
}

func echo(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		return
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		msg, _ := json.Marshal(map[string]string{"error": err.Error()})
		w.Write(msg)
		return
	}
	out, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.Write(out)
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	flag.StringVar(&port, "port", port, "TCP port to listen on (env PORT)")
	flag.Parse()
	if flag.NArg() > 0 {
		port = flag.Arg(0)
	}
	if s := os.Getenv("WORKERS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			log.Fatalf("bad WORKERS %q", s)
		}
		runtime.GOMAXPROCS(n)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/", root)
	mux.HandleFunc("/echo", echo)
	srv := &http.Server{Addr: ":" + port, Handler: mux}

	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		srv.Close()
	}()
	log.Printf("go peer listening on :%s (GOMAXPROCS=%d)", port, runtime.GOMAXPROCS(0))
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
