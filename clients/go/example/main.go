// Command example calls the AI Platform gateway from Go: it lists the services, streams a chat
// from the `echo` demo service printing each token as it arrives, and calls a service that does
// not exist to show how an error status and its google.rpc details are read.
//
// Usage:
//
//	example [-target host:port] [-api-key KEY] [-service-config clients/service_config.json] [-message text] [-delay-ms N]
//
// The target defaults to $AIP_TARGET, else localhost:50051; the caller key, which a gateway with
// keys wants on every call, to $AIP_API_KEY (-api-key "" sends none). -delay-ms is the echo service's
// pause before each word, to watch the tokens arrive. It exits 0 when every step behaved as
// the gateway documents, 1 otherwise.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"aiplatform-gateway/aiplatform"
	aiplatformv1 "aiplatform-gateway/aiplatform/v1"
)

func main() {
	target := flag.String("target", defaultTarget(), "the gateway's host:port (default $AIP_TARGET, else localhost:50051)")
	// No default value here: -help prints defaults, and the key must not show.
	apiKeyFlag := flag.String("api-key", "", "the caller key, sent as authorization: Bearer KEY (default $AIP_API_KEY)")
	serviceConfig := flag.String("service-config", "clients/service_config.json", "the client service config: retries, default deadline, wait-for-ready")
	message := flag.String("message", "hello from Go", "the text the echo service streams back word by word")
	delayMs := flag.Int("delay-ms", 0, "the echo service's pause before each word, in milliseconds")
	flag.Parse()
	apiKey := aiplatform.APIKeyFromEnv()
	flag.Visit(func(set *flag.Flag) {
		if set.Name == "api-key" {
			apiKey = *apiKeyFlag // given, even empty: it wins over $AIP_API_KEY
		}
	})
	if err := run(*target, apiKey, *serviceConfig, *message, *delayMs); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

func run(target, apiKey, serviceConfigPath, message string, delayMs int) error {
	serviceConfig, err := os.ReadFile(serviceConfigPath)
	if err != nil {
		return fmt.Errorf("reading the service config: %w", err)
	}
	// The same service config as the Python client: a 600 s default deadline, waiting for the
	// gateway instead of failing at once, and retries of UNAVAILABLE, which Debian's grpc-go
	// 1.33 applies only with GRPC_GO_RETRY=on in the environment (newer grpc-go by default).
	// WithInsecure: plaintext, as `make run` serves; grpc-go 1.33 has no credentials/insecure yet.
	// WithAPIKey: the caller key on every call (nothing for an empty key).
	conn, err := grpc.Dial(target, grpc.WithInsecure(), grpc.WithDefaultServiceConfig(string(serviceConfig)),
		aiplatform.WithAPIKey(apiKey))
	if err != nil {
		return fmt.Errorf("dialing %s: %w", target, err)
	}
	defer conn.Close()
	client := aiplatformv1.NewAIPlatformServiceClient(conn)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := listServices(ctx, client); err != nil {
		return err
	}
	if err := streamChat(ctx, client, message, delayMs); err != nil {
		return err
	}
	return showError(ctx, client)
}

// listServices prints one line per configured service.
func listServices(ctx context.Context, client aiplatformv1.AIPlatformServiceClient) error {
	response, err := client.ListServices(ctx, &aiplatformv1.ListServicesRequest{})
	if err != nil {
		return fmt.Errorf("ListServices: %w", err)
	}
	for _, service := range response.GetServices() {
		fmt.Printf("service %s type=%s provider=%s ready=%t\n",
			service.GetName(), service.GetType(), service.GetProvider(), service.GetReady())
	}
	return nil
}

// streamChat prints each token of the echo service's answer the moment it arrives.
func streamChat(ctx context.Context, client aiplatformv1.AIPlatformServiceClient, message string, delayMs int) error {
	// parameters is a google.protobuf.Struct; structpb builds one from plain Go values.
	parameters, err := structpb.NewStruct(map[string]interface{}{"delay_ms": delayMs})
	if err != nil {
		return err
	}
	stream, err := client.StreamChat(ctx, &aiplatformv1.StreamChatRequest{
		ServiceName: "echo",
		Messages:    []*aiplatformv1.ChatMessage{{Role: "user", Content: message}},
		Parameters:  parameters,
	})
	if err != nil {
		return fmt.Errorf("StreamChat: %w", err)
	}
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			// The stream ended OK: the upstream finished, and the last message said how.
			return nil
		}
		if err != nil {
			// A stream cut after some tokens ends here with a non-OK status.
			return fmt.Errorf("StreamChat: %w", err)
		}
		if chunk.GetDelta() != "" {
			fmt.Printf("token %q\n", chunk.GetDelta())
		}
		if reason := chunk.GetFinishReason(); reason != aiplatformv1.FinishReason_FINISH_REASON_UNSPECIFIED {
			fmt.Printf("finish %s output_tokens=%d\n", reason, chunk.GetUsage().GetOutputTokens())
		}
	}
}

// showError calls a service that does not exist and prints the status and its details.
func showError(ctx context.Context, client aiplatformv1.AIPlatformServiceClient) error {
	_, err := client.Chat(ctx, &aiplatformv1.ChatRequest{
		ServiceName: "no_such_service",
		Messages:    []*aiplatformv1.ChatMessage{{Role: "user", Content: "hello"}},
	})
	if err == nil {
		return errors.New("Chat with an unknown service succeeded")
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("not a gRPC status: %w", err)
	}
	fmt.Printf("error code=%s message=%q\n", codeName(st.Code()), st.Message())
	reason := ""
	for _, detail := range st.Details() {
		switch detail := detail.(type) {
		case *errdetails.ErrorInfo:
			reason = detail.GetReason()
			fmt.Printf("error info reason=%s domain=%s metadata=%v\n", detail.GetReason(), detail.GetDomain(), detail.GetMetadata())
		case *errdetails.BadRequest:
			for _, violation := range detail.GetFieldViolations() {
				fmt.Printf("bad request field=%s description=%q\n", violation.GetField(), violation.GetDescription())
			}
		case *errdetails.RetryInfo:
			fmt.Printf("retry after %s\n", detail.GetRetryDelay())
		case error:
			// A detail of a type this program does not link in; the status is still usable.
			fmt.Printf("undecodable detail: %v\n", detail)
		}
	}
	if st.Code() != codes.NotFound || reason != "SERVICE_NOT_FOUND" {
		return fmt.Errorf("expected NOT_FOUND with reason SERVICE_NOT_FOUND, got %s with reason %q", codeName(st.Code()), reason)
	}
	return nil
}

// codeName is the status code's canonical name (NOT_FOUND), as the gateway's README and the
// other languages' clients print it; grpc-go's String() says NotFound.
func codeName(code codes.Code) string {
	names := []string{
		"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
		"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
		"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
		"UNAUTHENTICATED",
	}
	if int(code) < len(names) {
		return names[code]
	}
	return fmt.Sprintf("CODE_%d", code)
}

func defaultTarget() string {
	if target := os.Getenv("AIP_TARGET"); target != "" {
		return target
	}
	return "localhost:50051"
}
