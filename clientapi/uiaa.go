package clientapi

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// User-interactive authentication (UIAA): an endpoint that needs it answers
// 401 with the flows a client may complete, and a session; the client
// completes stages by repeating the request with an "auth" object.

const (
	stagePassword = "m.login.password"
	stageDummy    = "m.login.dummy"

	uiaaSessionLifetime = 10 * time.Minute
	maxUIAASessions     = 100000
)

type uiaaSession struct {
	created   time.Time
	completed []string
	// request binds the session to one endpoint and method, so that a
	// session completed for one operation cannot authorise another.
	request string
	// localpart is the user the session authenticates, "" for registration.
	localpart string
	// params is the body of the request that started a registration: later
	// requests may carry only "auth", and the spec has the server remember.
	params json.RawMessage
	// result is the answer to a completed registration, replayed when the
	// client repeats the request with the same session.
	result []byte
}

// uiaaSessions holds sessions in memory: they live for minutes, and losing
// them in a restart only makes the client start again.
type uiaaSessions struct {
	mu       sync.Mutex
	sessions map[string]*uiaaSession
}

func newUIAASessions() *uiaaSessions {
	return &uiaaSessions{sessions: map[string]*uiaaSession{}}
}

func (u *uiaaSessions) get(id string) *uiaaSession {
	u.mu.Lock()
	defer u.mu.Unlock()
	s, ok := u.sessions[id]
	if !ok || time.Since(s.created) > uiaaSessionLifetime {
		delete(u.sessions, id)
		return nil
	}
	// A copy: complete may append to the stored one concurrently.
	c := *s
	c.completed = slices.Clone(s.completed)
	return &c
}

func (u *uiaaSessions) create(request, localpart string, params json.RawMessage) (string, *uiaaSession) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.sessions) >= maxUIAASessions {
		for id, s := range u.sessions {
			if time.Since(s.created) > uiaaSessionLifetime {
				delete(u.sessions, id)
			}
		}
	}
	id := randomString(18)
	s := &uiaaSession{created: time.Now(), request: request, localpart: localpart, params: params}
	u.sessions[id] = s
	return id, s
}

func (u *uiaaSessions) complete(id, stage string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if s, ok := u.sessions[id]; ok && !slices.Contains(s.completed, stage) {
		s.completed = append(s.completed, stage)
	}
}

// setResult records the answer of a completed registration.
func (u *uiaaSessions) setResult(id string, result []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if s, ok := u.sessions[id]; ok {
		s.result = result
	}
}

func (u *uiaaSessions) delete(id string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.sessions, id)
}

// uiaaAuth is the "auth" object of a request.
type uiaaAuth struct {
	Type       string          `json:"type"`
	Session    string          `json:"session"`
	Password   string          `json:"password"`
	Identifier json.RawMessage `json:"identifier"`
	User       string          `json:"user"` // deprecated form of identifier
}

// uiaaChallenge is the 401 body: the flows, the session and what is done,
// with errcode and error only when a stage just failed.
func uiaaChallenge(flows [][]string, session string, completed []string, err *httputil.Error) *httputil.Error {
	flowList := make([]map[string]any, len(flows))
	for i, f := range flows {
		flowList[i] = map[string]any{"stages": f}
	}
	if completed == nil {
		completed = []string{}
	}
	e := &httputil.Error{Status: http.StatusUnauthorized, Extra: map[string]any{
		"flows": flowList, "params": map[string]any{}, "session": session, "completed": completed,
	}}
	if err != nil {
		e.Code, e.Message = err.Code, err.Message
	}
	return e
}

// requireUIAA runs the user-interactive authentication for a request whose
// "auth" field is auth (nil when absent). localpart is the logged-in user
// ("" for registration). It returns nil when a whole flow is complete, and
// the session ID then; otherwise the error to send (usually the 401).
// Sessions of logged-in users end when their flow completes, so one proof
// authorises one operation; registration sessions (params non-nil) live on
// so that a repeated request gets the same answer.
func (a *API) requireUIAA(r *http.Request, auth *uiaaAuth, localpart string, flows [][]string, params json.RawMessage) (string, error) {
	request := r.Method + " " + r.URL.Path
	if auth == nil || (auth.Type == "" && auth.Session == "") {
		id, _ := a.uiaa.create(request, localpart, params)
		return "", uiaaChallenge(flows, id, nil, nil)
	}
	id := auth.Session
	s := a.uiaa.get(id)
	if id == "" || s == nil {
		// An unknown session: a stage answered without a session is
		// completed into a new one.
		id, s = a.uiaa.create(request, localpart, params)
	}
	if s.request != request || s.localpart != localpart {
		return "", httputil.Forbidden("This authentication session belongs to another request")
	}
	if auth.Type != "" {
		allowed := slices.ContainsFunc(flows, func(f []string) bool { return slices.Contains(f, auth.Type) })
		if !allowed {
			return "", uiaaChallenge(flows, id, s.completed, httputil.BadRequest("Unknown authentication type %q", auth.Type))
		}
		if auth.Type == stagePassword {
			// Guessing the password here must be no faster than at login.
			if err := a.authLimit.Check(a.userID(localpart)); err != nil {
				return "", err
			}
			// Proving to be someone else is not a failed stage to retry.
			who, err := a.identifiedUser(auth.Identifier, auth.User)
			if err != nil {
				return "", err
			}
			if who != localpart {
				return "", httputil.Forbidden("You can only authenticate as yourself")
			}
		}
		if err := a.checkStage(r, auth, localpart); err != nil {
			var merr *httputil.Error
			if errors.As(err, &merr) {
				return "", uiaaChallenge(flows, id, s.completed, merr)
			}
			return "", err
		}
		a.uiaa.complete(id, auth.Type)
		s = a.uiaa.get(id)
		if s == nil {
			return "", httputil.Forbidden("Authentication session expired")
		}
	}
	for _, f := range flows {
		if containsAll(s.completed, f) {
			if s.params == nil {
				a.uiaa.delete(id)
			}
			return id, nil
		}
	}
	return "", uiaaChallenge(flows, id, s.completed, nil)
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// checkStage verifies one completed stage.
func (a *API) checkStage(r *http.Request, auth *uiaaAuth, localpart string) error {
	switch auth.Type {
	case stageDummy:
		return nil
	case stagePassword:
		// requireUIAA has checked that the identifier names localpart.
		if _, err := a.accounts.CheckPassword(r.Context(), localpart, auth.Password); err != nil {
			if errors.Is(err, accounts.ErrWrongPassword) || errors.Is(err, accounts.ErrNotFound) || errors.Is(err, accounts.ErrDeactivated) {
				return httputil.Forbidden("Invalid password")
			}
			return err
		}
		return nil
	}
	return httputil.BadRequest("Unsupported authentication type %q", auth.Type)
}

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
