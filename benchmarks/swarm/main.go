// Command swarm holds many concurrent streams for the c5000 scenario, like `python -m
// benchmarks.loadgen swarm` but at a fraction of its CPU: on a 2-core machine the load
// generator shares the gateway's cores, and every CPU-second it spends is one the gateway
// under test does not get.
//
// It knows nothing of the gateway's API. The Python harness (benchmarks/loadgen.py) builds
// each request once and passes its bytes: a serialised StreamChatRequest for a gRPC target,
// or a URL, a JSON body and the byte marker of one token for a direct call to the fake
// upstream. A gRPC response counts as a token when its field 1 (`delta`) is not empty.
//
// It prints nothing on success and writes {"records": [[start, ttft, end, tokens, status],
// ...], "client_cpu_s": N} to --output, the same document the Python swarm writes.
//
// Built by the harness in GOPATH mode against Debian's packages (golang-go,
// golang-google-grpc-dev), so no module download is needed.
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// rawCodec passes already-serialised messages through. Its name is "proto", so the call's
// content-type stays application/grpc+proto.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*v.(*[]byte) = data
	return nil
}
func (rawCodec) Name() string { return "proto" }

// The status names Python's grpc prints, by code, so both clients' records read alike.
var codeNames = []string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
	"UNAUTHENTICATED",
}

type result struct {
	ttft    float64 // seconds; < 0 when no token came
	latency float64
	tokens  int
	status  string
}

type options struct {
	address, method, request, url, body, marker, output string
	direct                                              bool
	count, offset, processes, total, channels           int
	ramp, startAt, timeout                              float64
}

func main() {
	var o options
	flag.StringVar(&o.address, "address", "", "host:port of the gRPC target")
	flag.StringVar(&o.method, "method", "/aiplatform.v1.AIPlatformService/StreamChat", "full gRPC method name")
	flag.StringVar(&o.request, "request", "", "the serialised request, base64")
	flag.BoolVar(&o.direct, "direct", false, "call the fake upstream over HTTP instead")
	flag.StringVar(&o.url, "url", "", "with --direct: the URL to POST to")
	flag.StringVar(&o.body, "body", "", "with --direct: the JSON body")
	flag.StringVar(&o.marker, "marker", "", "with --direct: the bytes that mark one token")
	flag.IntVar(&o.count, "count", 0, "streams this process opens")
	flag.IntVar(&o.offset, "offset", 0, "this process's index")
	flag.IntVar(&o.processes, "processes", 1, "client processes in all")
	flag.IntVar(&o.total, "total", 0, "streams over all processes")
	flag.IntVar(&o.channels, "channels", 8, "gRPC connections this process spreads its streams over")
	flag.Float64Var(&o.ramp, "ramp", 3.0, "seconds over which the streams start")
	flag.Float64Var(&o.startAt, "start-at", 0, "wall-clock time of the first start (Unix seconds)")
	flag.Float64Var(&o.timeout, "timeout", 60, "each stream's deadline, seconds")
	flag.StringVar(&o.output, "output", "", "file the JSON records are written to")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "swarm:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.count <= 0 || o.total <= 0 || o.output == "" {
		return errors.New("--count, --total and --output are required")
	}
	var call func(ctx context.Context, index int) result
	if o.direct {
		call = directCaller(o)
	} else {
		request, err := base64.StdEncoding.DecodeString(o.request)
		if err != nil {
			return fmt.Errorf("--request is not base64: %w", err)
		}
		connections := make([]*grpc.ClientConn, o.channels)
		for i := range connections {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			// Fixed flow-control windows turn grpc-go's bandwidth estimation off: it pings the
			// server on received data, and answering those pings costs the gateway CPU.
			conn, err := grpc.DialContext(ctx, o.address, grpc.WithInsecure(), grpc.WithBlock(),
				grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<24))
			cancel()
			if err != nil {
				return fmt.Errorf("connecting to %s: %w", o.address, err)
			}
			defer conn.Close()
			connections[i] = conn
		}
		call = func(ctx context.Context, index int) result {
			return grpcStream(ctx, connections[index%len(connections)], o.method, request)
		}
	}

	records := make([][]interface{}, o.count)
	var wg sync.WaitGroup
	for index := 0; index < o.count; index++ {
		wg.Add(1)
		go func(index int) {
			defer wg.Done()
			global := o.offset + index*o.processes
			startAt := o.startAt + o.ramp*float64(global)/float64(o.total)
			time.Sleep(time.Until(unixTime(startAt)))
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), seconds(o.timeout))
			r := call(ctx, index)
			cancel()
			var ttft interface{}
			if r.ttft >= 0 {
				ttft = r.ttft
			}
			startWall := unixSeconds(start)
			records[index] = []interface{}{startWall, ttft, startWall + r.latency, r.tokens, r.status}
		}(index)
	}
	wg.Wait()

	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return err
	}
	cpu := float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
	report, err := json.Marshal(map[string]interface{}{
		"records":      records,
		"client_cpu_s": math.Round(cpu*1000) / 1000,
	})
	if err != nil {
		return err
	}
	return os.WriteFile(o.output, report, 0o644)
}

// grpcStream makes one server-streaming call and counts the responses that carry a delta.
func grpcStream(ctx context.Context, conn *grpc.ClientConn, method string, request []byte) result {
	start := time.Now()
	r := result{ttft: -1, status: "OK"}
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method, grpc.ForceCodec(rawCodec{}))
	if err == nil {
		err = stream.SendMsg(&request)
	}
	if err == nil {
		err = stream.CloseSend()
	}
	for err == nil {
		var message []byte
		if err = stream.RecvMsg(&message); err != nil {
			break
		}
		if hasDelta(message) {
			if r.ttft < 0 {
				r.ttft = time.Since(start).Seconds()
			}
			r.tokens++
		}
	}
	r.latency = time.Since(start).Seconds()
	if err != nil && err != io.EOF {
		code := int(status.Code(err))
		r.status = "UNKNOWN"
		if code < len(codeNames) {
			r.status = codeNames[code]
		}
	}
	return r
}

// hasDelta tells whether a StreamChatResponse has a non-empty field 1 (`delta`).
func hasDelta(message []byte) bool {
	for len(message) > 0 {
		number, kind, n := protowire.ConsumeTag(message)
		if n < 0 {
			return false
		}
		message = message[n:]
		if number == 1 && kind == protowire.BytesType {
			value, m := protowire.ConsumeBytes(message)
			return m >= 0 && len(value) > 0
		}
		m := protowire.ConsumeFieldValue(number, kind, message)
		if m < 0 {
			return false
		}
		message = message[m:]
	}
	return false
}

// directCaller POSTs to the fake upstream and counts token markers in the streamed body.
func directCaller(o options) func(ctx context.Context, index int) result {
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: o.count,
		DisableCompression:  true,
	}}
	marker := []byte(o.marker)
	body := []byte(o.body)
	return func(ctx context.Context, _ int) result {
		start := time.Now()
		r := result{ttft: -1, status: "OK"}
		request, err := http.NewRequestWithContext(ctx, http.MethodPost, o.url, bytes.NewReader(body))
		if err != nil {
			r.status = "REQUEST"
			return r
		}
		request.Header.Set("Content-Type", "application/json")
		request.Header.Set("Authorization", "Bearer bench-key")
		response, err := client.Do(request)
		if err == nil {
			defer response.Body.Close()
			if response.StatusCode != http.StatusOK {
				err = fmt.Errorf("HTTP_%d", response.StatusCode)
			}
		}
		buffer := make([]byte, 16*1024)
		var tail []byte
		for err == nil {
			var n int
			n, err = response.Body.Read(buffer)
			if n > 0 {
				// A marker may straddle two reads: search the end of the previous one too.
				window := append(tail, buffer[:n]...)
				if found := bytes.Count(window, marker); found > 0 {
					if r.ttft < 0 {
						r.ttft = time.Since(start).Seconds()
					}
					r.tokens += found
				}
				keep := len(marker) - 1 // shorter than a marker, so none is counted twice
				if keep > len(window) {
					keep = len(window)
				}
				tail = append([]byte(nil), window[len(window)-keep:]...)
			}
		}
		r.latency = time.Since(start).Seconds()
		if err != io.EOF {
			r.status = strings.SplitN(err.Error(), ":", 2)[0]
			if errors.Is(err, context.DeadlineExceeded) {
				r.status = "DEADLINE_EXCEEDED"
			}
		}
		return r
	}
}

func unixTime(s float64) time.Time {
	whole := math.Floor(s)
	return time.Unix(int64(whole), int64((s-whole)*1e9))
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
