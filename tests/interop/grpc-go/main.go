// A plain grpc-go server for the gateway's interop tests (tests/interop.rs): it serves
// test.echo.v1.EchoService (tests/fixtures/protos/echo/v1/echo.proto) and
// grpc.health.v1.Health. Messages pass through a raw-bytes codec and a hand-written
// grpc.ServiceDesc, so no protoc and no generated code are needed: unary methods answer
// with the request bytes, `Stream` sends them back `x-echo-count` times.
//
// Keepalive enforcement and connection age come from flags, so a test can make grpc-go's
// "too_many_pings" GOAWAY and its max-age GOAWAYs happen within seconds.
//
// Build with ./build.sh (offline, from Debian's golang-go and golang-google-grpc-dev).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// rawCodec passes the echo service's message bytes through unchanged (the gateway
// encodes and decodes them); generated messages (the health service) use protobuf.
type rawCodec struct{}

var protoCodec = encoding.GetCodec("proto")

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	if b, ok := v.(*[]byte); ok {
		return *b, nil
	}
	return protoCodec.Marshal(v)
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	if b, ok := v.(*[]byte); ok {
		*b = append((*b)[:0], data...)
		return nil
	}
	return protoCodec.Unmarshal(data, v)
}

func (rawCodec) Name() string   { return "proto" }
func (rawCodec) String() string { return "proto" }

type echoServer interface{}

var calls int64

// header returns the first value of metadata `name` as a non-negative integer, or def.
func header(ctx context.Context, name string, def int) int {
	md, _ := metadata.FromIncomingContext(ctx)
	if values := md.Get(name); len(values) > 0 {
		if n, err := strconv.Atoi(values[0]); err == nil && n >= 0 {
			return n
		}
	}
	return def
}

func unaryEcho(_ interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
	atomic.AddInt64(&calls, 1)
	var message []byte
	if err := dec(&message); err != nil {
		return nil, err
	}
	if code := header(ctx, "x-echo-fail", 0); code != 0 {
		return nil, status.Error(codes.Code(code), "forced")
	}
	if delay := header(ctx, "x-echo-delay-ms", 0); delay > 0 {
		select {
		case <-time.After(time.Duration(delay) * time.Millisecond):
		case <-ctx.Done():
			// What a well-behaved handler answers: DEADLINE_EXCEEDED or CANCELLED.
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	return &message, nil
}

func streamEcho(_ interface{}, stream grpc.ServerStream) error {
	atomic.AddInt64(&calls, 1)
	var message []byte
	if err := stream.RecvMsg(&message); err != nil {
		return err
	}
	count := header(stream.Context(), "x-echo-count", 3)
	gap := time.Duration(header(stream.Context(), "x-echo-gap-ms", 20)) * time.Millisecond
	for i := 0; i < count; i++ {
		if i > 0 {
			time.Sleep(gap)
		}
		if err := stream.SendMsg(&message); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	minTime := flag.Duration("enforce-min-time", 5*time.Minute, "keepalive enforcement MinTime (grpc-go default 5m)")
	permitWithoutStream := flag.Bool("permit-without-stream", false, "keepalive enforcement PermitWithoutStream (default false)")
	maxAge := flag.Duration("max-connection-age", 0, "MaxConnectionAge (0: infinite, the default)")
	maxAgeGrace := flag.Duration("max-connection-age-grace", 0, "MaxConnectionAgeGrace (0: infinite, the default)")
	flag.Parse()

	params := keepalive.ServerParameters{}
	if *maxAge > 0 {
		params.MaxConnectionAge = *maxAge
	}
	if *maxAgeGrace > 0 {
		params.MaxConnectionAgeGrace = *maxAgeGrace
	}
	server := grpc.NewServer(
		grpc.CustomCodec(rawCodec{}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: *minTime, PermitWithoutStream: *permitWithoutStream}),
		grpc.KeepaliveParams(params),
	)
	methods := []grpc.MethodDesc{}
	for _, name := range []string{"Get", "GetBook", "Create", "Update", "Cancel", "GetNested", "GetNestedOnly", "Plain"} {
		methods = append(methods, grpc.MethodDesc{MethodName: name, Handler: unaryEcho})
	}
	server.RegisterService(&grpc.ServiceDesc{
		ServiceName: "test.echo.v1.EchoService",
		HandlerType: (*echoServer)(nil),
		Methods:     methods,
		Streams:     []grpc.StreamDesc{{StreamName: "Stream", Handler: streamEcho, ServerStreams: true}},
		Metadata:    "echo/v1/echo.proto",
	}, struct{}{})
	healthpb.RegisterHealthServer(server, health.NewServer())

	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// The test reads the address from this first line.
	fmt.Printf("listening on %s\n", listener.Addr())
	if err := server.Serve(listener); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
