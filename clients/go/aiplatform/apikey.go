// Package aiplatform holds what a Go program needs besides the generated code
// (aiplatform-gateway/aiplatform/v1) to call a gateway with caller keys: WithAPIKey sends the
// key with every call.
//
//	conn, err := grpc.Dial(target, grpc.WithInsecure(), aiplatform.WithAPIKey(aiplatform.APIKeyFromEnv()))
package aiplatform

import (
	"context"
	"errors"
	"os"
	"strings"

	"google.golang.org/grpc"
)

// APIKeyVariable is the environment variable that APIKeyFromEnv reads, as the Python and
// Node.js clients and the aiplatform command do.
const APIKeyVariable = "AIP_API_KEY"

// errKeyCharacters does not repeat the key: errors end up in logs.
var errKeyCharacters = errors.New("the caller key (" + APIKeyVariable + " or WithAPIKey) may hold only printable ASCII characters")

// APIKeyFromEnv returns the caller key in $AIP_API_KEY, or "" when it is not set.
func APIKeyFromEnv() string {
	return os.Getenv(APIKeyVariable)
}

// WithAPIKey makes every call on the connection, unary and streaming, carry the caller key as
// `authorization: Bearer <key>` metadata. An empty key (or only blanks) adds nothing. It works on
// plaintext connections too (grpc.WithInsecure, e.g. to a gateway on the same host); beyond one
// host use TLS, or the key travels in clear. A key with characters other than printable ASCII,
// which gRPC metadata cannot carry, fails each call with codes.Unauthenticated.
func WithAPIKey(key string) grpc.DialOption {
	key = strings.TrimSpace(key)
	if key == "" {
		return grpc.EmptyDialOption{}
	}
	return grpc.WithPerRPCCredentials(apiKey{authorization: "Bearer " + key})
}

// apiKey is the key as per-call credentials (grpc-go's credentials.PerRPCCredentials). Per-call
// credentials, not an interceptor: grpc-go adds their metadata to every kind of call, and
// RequireTransportSecurity lets them go over plaintext connections.
type apiKey struct {
	authorization string
}

// GetRequestMetadata returns the authorization metadata for each call.
func (k apiKey) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	for _, character := range k.authorization {
		if character < ' ' || character > '~' {
			return nil, errKeyCharacters
		}
	}
	return map[string]string{"authorization": k.authorization}, nil
}

// RequireTransportSecurity is false: the gateway may serve plaintext on a trusted network.
func (apiKey) RequireTransportSecurity() bool {
	return false
}

// String keeps the key out of fmt's %v and %s.
func (apiKey) String() string {
	return "aiplatform.APIKey(redacted)"
}

// GoString keeps the key out of fmt's %#v.
func (k apiKey) GoString() string {
	return k.String()
}
