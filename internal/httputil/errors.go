// Package httputil is the HTTP plumbing every API shares: Matrix errors,
// JSON bodies, middleware (request IDs, logging, panics, CORS, limits,
// metrics) and rate limiting.
package httputil

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// Error is a Matrix error response: an HTTP status, an errcode and a
// message, plus any extra fields the spec defines for that errcode.
type Error struct {
	Status  int
	Code    string
	Message string
	Extra   map[string]any
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message) }

// MarshalJSON writes {"errcode": ..., "error": ..., extra fields...}. An
// empty Code leaves both out: a user-interactive authentication challenge
// that reports no failure is only its extra fields.
func (e *Error) MarshalJSON() ([]byte, error) {
	m := make(map[string]any, len(e.Extra)+2)
	for k, v := range e.Extra {
		m[k] = v
	}
	if e.Code != "" {
		m["errcode"] = e.Code
		m["error"] = e.Message
	}
	return json.Marshal(m)
}

// With returns a copy of e with an extra response field.
func (e *Error) With(key string, value any) *Error {
	c := *e
	c.Extra = make(map[string]any, len(e.Extra)+1)
	for k, v := range e.Extra {
		c.Extra[k] = v
	}
	c.Extra[key] = value
	return &c
}

func newError(status int, code string) func(format string, args ...any) *Error {
	return func(format string, args ...any) *Error {
		msg := format
		if len(args) > 0 {
			msg = fmt.Sprintf(format, args...)
		}
		return &Error{Status: status, Code: code, Message: msg}
	}
}

// Constructors for the errors the spec names, with their usual status.
var (
	Forbidden        = newError(http.StatusForbidden, "M_FORBIDDEN")
	NotFound         = newError(http.StatusNotFound, "M_NOT_FOUND")
	Unrecognized     = newError(http.StatusNotFound, "M_UNRECOGNIZED")
	NotJSON          = newError(http.StatusBadRequest, "M_NOT_JSON")
	BadJSON          = newError(http.StatusBadRequest, "M_BAD_JSON")
	InvalidParam     = newError(http.StatusBadRequest, "M_INVALID_PARAM")
	MissingParam     = newError(http.StatusBadRequest, "M_MISSING_PARAM")
	MissingToken     = newError(http.StatusUnauthorized, "M_MISSING_TOKEN")
	TooLarge         = newError(http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
	UserInUse        = newError(http.StatusBadRequest, "M_USER_IN_USE")
	InvalidUsername  = newError(http.StatusBadRequest, "M_INVALID_USERNAME")
	UserDeactivated  = newError(http.StatusForbidden, "M_USER_DEACTIVATED")
	Unauthorized     = newError(http.StatusUnauthorized, "M_UNAUTHORIZED")
	Unknown          = newError(http.StatusInternalServerError, "M_UNKNOWN")
	BadRequest       = newError(http.StatusBadRequest, "M_UNKNOWN")
	GuestForbidden   = newError(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN")
	WeakPassword     = newError(http.StatusBadRequest, "M_WEAK_PASSWORD")
	Exclusive        = newError(http.StatusBadRequest, "M_EXCLUSIVE")
	UnsupportedRoomV = newError(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION")
)

// UnknownToken is a 401 M_UNKNOWN_TOKEN; softLogout tells the client it
// may refresh or log in again without losing its device.
func UnknownToken(msg string, softLogout bool) *Error {
	return &Error{Status: http.StatusUnauthorized, Code: "M_UNKNOWN_TOKEN", Message: msg,
		Extra: map[string]any{"soft_logout": softLogout}}
}

// LimitExceeded is a 429 telling the client when to retry.
func LimitExceeded(retryAfterMS int64) *Error {
	return &Error{Status: http.StatusTooManyRequests, Code: "M_LIMIT_EXCEEDED",
		Message: "Too many requests", Extra: map[string]any{"retry_after_ms": retryAfterMS}}
}

// MethodNotAllowed is the 405 for a known path with the wrong method.
func MethodNotAllowed() *Error {
	return &Error{Status: http.StatusMethodNotAllowed, Code: "M_UNRECOGNIZED", Message: "Method not allowed on this endpoint"}
}
