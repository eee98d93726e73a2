package httputil

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"unicode/utf8"

	"github.com/sirupsen/logrus"
)

// WriteJSON writes body as JSON with the given status.
func WriteJSON(w http.ResponseWriter, status int, body any) {
	data, err := json.Marshal(body)
	if err != nil {
		logrus.WithError(err).Error("encode response")
		status = http.StatusInternalServerError
		data = []byte(`{"errcode":"M_UNKNOWN","error":"Internal server error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(status)
	_, _ = w.Write(data)
}

// WriteError writes err as a Matrix error. Errors that are not *Error are
// logged and answered with a 500 that reveals nothing of them.
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	var merr *Error
	if !errors.As(err, &merr) {
		if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
			// The client hung up: nobody reads the answer, nothing failed.
			LoggerFrom(r).Debug("client went away")
			merr = &Error{Status: 499, Code: "M_UNKNOWN", Message: "Request cancelled"}
		} else if errors.Is(err, errBodyTooLarge) {
			merr = TooLarge("Request body too large")
		} else {
			LoggerFrom(r).WithError(err).Error("request failed")
			merr = Unknown("Internal server error")
		}
	}
	if merr.Status == http.StatusTooManyRequests {
		if ms, ok := merr.Extra["retry_after_ms"].(int64); ok {
			w.Header().Set("Retry-After", strconv.FormatInt((ms+999)/1000, 10))
		}
	}
	WriteJSON(w, merr.Status, merr)
}

// Handler is an HTTP handler that returns its error instead of writing it.
type Handler func(w http.ResponseWriter, r *http.Request) error

func (h Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := h(w, r); err != nil {
		WriteError(w, r, err)
	}
}

var errBodyTooLarge = errors.New("request body too large")

// ReadBody reads the whole request body, which the limit middleware has
// capped; a body over the cap is M_TOO_LARGE.
func ReadBody(r *http.Request) ([]byte, error) {
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, TooLarge("Request body too large")
		}
		return nil, BadRequest("Could not read the request body")
	}
	return data, nil
}

// ReadJSON reads a JSON object from the body into dst. Not JSON, or not an
// object, is M_NOT_JSON; JSON whose fields have the wrong types is
// M_BAD_JSON.
func ReadJSON(r *http.Request, dst any) error {
	data, err := ReadBody(r)
	if err != nil {
		return err
	}
	return DecodeJSONObject(data, dst)
}

// DecodeJSONObject is ReadJSON on bytes already read.
func DecodeJSONObject(data []byte, dst any) error {
	trimmed := bytes.TrimSpace(data)
	// encoding/json would quietly turn invalid UTF-8 into U+FFFD; JSON
	// must be UTF-8, so such a body is not JSON.
	if len(trimmed) == 0 || trimmed[0] != '{' || !utf8.Valid(trimmed) || !json.Valid(trimmed) {
		return NotJSON("Request body is not a JSON object")
	}
	if err := json.Unmarshal(trimmed, dst); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return BadJSON("Field %q has the wrong type", typeErr.Field)
		}
		return BadJSON("Request body has the wrong shape")
	}
	return nil
}
