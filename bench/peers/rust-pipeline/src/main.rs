//! Pipeline peer: decodes an OTLP export request, splits it into one request per record and re-encodes each, in Rust (prost).
//!
//!   rust-pipeline --input FILE --seconds S [--threads T] [--signal logs|traces] [--dump-first FILE]
//!
//! Each of T threads loops for S seconds over the same input bytes (an ExportLogsServiceRequest,
//! or an ExportTraceServiceRequest with --signal traces): `Message::decode` into owned structs (a
//! full decode: every record, attribute and string), then for every record one request holding
//! that resource, that scope and that one record, `Message::encode` into a reused Vec, and the
//! length added to a counter (the null sink). The per-record request is one wrapper per scope
//! (resource cloned, scope moved, once per input request) into which each decoded record is moved
//! in turn, so no record is cloned and the bytes out are those of a full copy. The runner pins
//! with taskset.
//!
//! Prints one JSON line: {"records", "seconds", "records_per_s", "bytes_out", "max_rss_kb"}.
//! --dump-first FILE writes the first request produced (for record 0) to FILE, for check_pipeline.py.

mod otlp;

use std::process::exit;
use std::time::{Duration, Instant};

use prost::Message;

use otlp::*;

/// The null sink: it keeps only counts, so the encoding cannot be optimised away.
#[derive(Default)]
struct Sink {
    records: u64,
    bytes_out: u64,
    dump: Option<String>,
}

impl Sink {
    #[inline]
    fn take(&mut self, b: &[u8]) {
        self.records += 1;
        self.bytes_out += b.len() as u64;
        if let Some(path) = self.dump.take() {
            if let Err(e) = std::fs::write(&path, b) {
                die(&format!("dump {}: {}", path, e));
            }
        }
    }
}

fn die(msg: &str) -> ! {
    eprintln!("rust-pipeline: {}", msg);
    exit(1)
}

fn logs(input: &[u8], deadline: Instant, sink: &mut Sink) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let req = ExportLogsServiceRequest::decode(input).unwrap_or_else(|e| die(&format!("decode: {}", e)));
        for rl in req.resource_logs {
            for sl in rl.scope_logs {
                let mut out = ExportLogsServiceRequest {
                    resource_logs: vec![ResourceLogs {
                        resource: rl.resource.clone(),
                        schema_url: rl.schema_url.clone(),
                        scope_logs: vec![ScopeLogs {
                            scope: sl.scope,
                            schema_url: sl.schema_url,
                            log_records: Vec::with_capacity(1),
                        }],
                    }],
                };
                for rec in sl.log_records {
                    let one = &mut out.resource_logs[0].scope_logs[0].log_records;
                    one.clear();
                    one.push(rec);
                    buf.clear();
                    out.encode(&mut buf).unwrap_or_else(|e| die(&format!("encode: {}", e)));
                    sink.take(&buf);
                }
            }
        }
        if Instant::now() >= deadline {
            return;
        }
    }
}

fn traces(input: &[u8], deadline: Instant, sink: &mut Sink) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let req = ExportTraceServiceRequest::decode(input).unwrap_or_else(|e| die(&format!("decode: {}", e)));
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                let mut out = ExportTraceServiceRequest {
                    resource_spans: vec![ResourceSpans {
                        resource: rs.resource.clone(),
                        schema_url: rs.schema_url.clone(),
                        scope_spans: vec![ScopeSpans {
                            scope: ss.scope,
                            schema_url: ss.schema_url,
                            spans: Vec::with_capacity(1),
                        }],
                    }],
                };
                for span in ss.spans {
                    let one = &mut out.resource_spans[0].scope_spans[0].spans;
                    one.clear();
                    one.push(span);
                    buf.clear();
                    out.encode(&mut buf).unwrap_or_else(|e| die(&format!("encode: {}", e)));
                    sink.take(&buf);
                }
            }
        }
        if Instant::now() >= deadline {
            return;
        }
    }
}

/// Peak resident set size in KiB (VmHWM), 0 if /proc is not there.
fn max_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn usage() -> ! {
    eprintln!("usage: rust-pipeline --input FILE --seconds S [--threads T] [--signal logs|traces] [--dump-first FILE]");
    exit(2)
}

fn main() {
    let mut input = None;
    let mut seconds = 3.0f64;
    let mut threads = 1usize;
    let mut signal = String::from("logs");
    let mut dump = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next()).unwrap_or_else(|| usage());
        match name.trim_start_matches('-') {
            "input" => input = Some(value()),
            "seconds" => seconds = value().parse().unwrap_or_else(|_| usage()),
            "threads" => threads = value().parse().unwrap_or_else(|_| usage()),
            "signal" => signal = value(),
            "dump-first" => dump = Some(value()),
            _ => usage(),
        }
    }
    let input = input.unwrap_or_else(|| usage());
    if threads < 1 || !(seconds > 0.0) {
        usage();
    }
    let work: fn(&[u8], Instant, &mut Sink) = match signal.as_str() {
        "logs" => logs,
        "traces" => traces,
        _ => die(&format!("--signal: logs or traces, not {:?}", signal)),
    };
    let data = std::fs::read(&input).unwrap_or_else(|e| die(&format!("{}: {}", input, e)));

    let mut sinks: Vec<Sink> = (0..threads).map(|_| Sink::default()).collect();
    sinks[0].dump = dump;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    std::thread::scope(|s| {
        for sink in sinks.iter_mut() {
            let data = &data[..];
            s.spawn(move || work(data, deadline, sink));
        }
    });
    let elapsed = start.elapsed().as_secs_f64();

    let records: u64 = sinks.iter().map(|s| s.records).sum();
    let bytes_out: u64 = sinks.iter().map(|s| s.bytes_out).sum();
    println!(
        "{{\"records\":{},\"seconds\":{:.6},\"records_per_s\":{:.1},\"bytes_out\":{},\"max_rss_kb\":{}}}",
        records,
        elapsed,
        records as f64 / elapsed,
        bytes_out,
        max_rss_kb()
    );
}
