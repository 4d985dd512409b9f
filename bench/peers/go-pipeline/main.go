// Pipeline peer: decodes an OTLP export request, splits it into one request per record and re-encodes each, in Go.
//
//	go-pipeline --input FILE --seconds S [--threads T] [--signal logs|traces] [--dump-first FILE]
//
// Each of T goroutines loops for S seconds over the same input bytes (an ExportLogsServiceRequest,
// or an ExportTraceServiceRequest with --signal traces): proto.Unmarshal into a fresh message (a
// full decode: every record, attribute and string), then for every record one request holding
// that resource, that scope and that one record, proto.MarshalOptions.MarshalAppend into a reused
// buffer, and the length added to a counter (the null sink). The per-record request shares the
// decoded resource and scope (Go messages are pointers; nothing is mutated), so the bytes out are
// those of a full copy without a deep clone. GOMAXPROCS is Go's default (the CPUs in the affinity
// mask); the runner pins with taskset.
//
// Prints one JSON line: {"records", "seconds", "records_per_s", "bytes_out", "max_rss_kb"}.
// --dump-first FILE writes the first request produced (for record 0) to FILE, for check_pipeline.py.
//
// Types are generated at build time by protoc-gen-go from bench/peers/otlp/otlp.proto
// (bench/setup.sh); the runtime is Debian's google.golang.org/protobuf, built in GOPATH mode.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"google.golang.org/protobuf/proto"

	pb "keel.bench/pipeline/otlppb"
)

type counts struct {
	records  uint64
	bytesOut uint64
}

// sink is the null sink: it keeps only the total length, so the encoding cannot be optimised away.
type sink struct {
	counts
	dump  string
	dumpd bool
}

func (s *sink) take(b []byte) {
	s.records++
	s.bytesOut += uint64(len(b))
	if s.dump != "" && !s.dumpd {
		s.dumpd = true
		if err := os.WriteFile(s.dump, b, 0o644); err != nil {
			fatal("dump: %v", err)
		}
	}
}

func fatal(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "go-pipeline: "+format+"\n", a...)
	os.Exit(1)
}

func logs(input []byte, deadline time.Time, s *sink) {
	mo := proto.MarshalOptions{}
	var buf []byte
	var err error
	for {
		req := &pb.ExportLogsServiceRequest{}
		if err = proto.Unmarshal(input, req); err != nil {
			fatal("decode: %v", err)
		}
		for _, rl := range req.ResourceLogs {
			for _, sl := range rl.ScopeLogs {
				one := &pb.ScopeLogs{Scope: sl.Scope, SchemaUrl: sl.SchemaUrl, LogRecords: make([]*pb.LogRecord, 1)}
				out := &pb.ExportLogsServiceRequest{ResourceLogs: []*pb.ResourceLogs{{
					Resource: rl.Resource, SchemaUrl: rl.SchemaUrl, ScopeLogs: []*pb.ScopeLogs{one}}}}
				for _, rec := range sl.LogRecords {
					one.LogRecords[0] = rec
					if buf, err = mo.MarshalAppend(buf[:0], out); err != nil {
						fatal("encode: %v", err)
					}
					s.take(buf)
				}
			}
		}
		if !time.Now().Before(deadline) {
			return
		}
	}
}

func traces(input []byte, deadline time.Time, s *sink) {
	mo := proto.MarshalOptions{}
	var buf []byte
	var err error
	for {
		req := &pb.ExportTraceServiceRequest{}
		if err = proto.Unmarshal(input, req); err != nil {
			fatal("decode: %v", err)
		}
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				one := &pb.ScopeSpans{Scope: ss.Scope, SchemaUrl: ss.SchemaUrl, Spans: make([]*pb.Span, 1)}
				out := &pb.ExportTraceServiceRequest{ResourceSpans: []*pb.ResourceSpans{{
					Resource: rs.Resource, SchemaUrl: rs.SchemaUrl, ScopeSpans: []*pb.ScopeSpans{one}}}}
				for _, span := range ss.Spans {
					one.Spans[0] = span
					if buf, err = mo.MarshalAppend(buf[:0], out); err != nil {
						fatal("encode: %v", err)
					}
					s.take(buf)
				}
			}
		}
		if !time.Now().Before(deadline) {
			return
		}
	}
}

func main() {
	input := flag.String("input", "", "file holding the serialized export request")
	seconds := flag.Float64("seconds", 3, "how long to loop")
	threads := flag.Int("threads", 1, "goroutines looping in parallel")
	signal := flag.String("signal", "logs", "logs or traces")
	dump := flag.String("dump-first", "", "write the first request produced to this file")
	flag.Parse()
	if *input == "" || *threads < 1 || *seconds <= 0 {
		flag.Usage()
		os.Exit(2)
	}
	work := logs
	switch *signal {
	case "logs":
	case "traces":
		work = traces
	default:
		fatal("--signal: logs or traces, not %q", *signal)
	}
	data, err := os.ReadFile(*input)
	if err != nil {
		fatal("%v", err)
	}

	sinks := make([]sink, *threads)
	sinks[0].dump = *dump
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(time.Duration(*seconds * float64(time.Second)))
	for i := range sinks {
		wg.Add(1)
		go func(s *sink) {
			defer wg.Done()
			work(data, deadline, s)
		}(&sinks[i])
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()

	var total counts
	for i := range sinks {
		total.records += sinks[i].records
		total.bytesOut += sinks[i].bytesOut
	}
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	line, _ := json.Marshal(struct {
		Records     uint64  `json:"records"`
		Seconds     float64 `json:"seconds"`
		RecordsPerS float64 `json:"records_per_s"`
		BytesOut    uint64  `json:"bytes_out"`
		MaxRSSKB    int64   `json:"max_rss_kb"`
	}{total.records, elapsed, float64(total.records) / elapsed, total.bytesOut, ru.Maxrss}) // ru_maxrss: KiB on Linux
	fmt.Println(string(line))
}
