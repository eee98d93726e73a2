package syncapi

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/plexus-chat/plexus/accounts"
)

// AuthedHandler is a handler for a logged-in device.
type AuthedHandler = func(w http.ResponseWriter, r *http.Request, s *accounts.Session) error

// Register adds the sync API's routes; authed wraps a handler with the
// client API's access token check and rate limit.
func (s *SyncAPI) Register(root *mux.Router, authed func(AuthedHandler) http.Handler) {
	const prefix = "/_matrix/client/{apiVersion:(?:r0|v3)}"
	root.Handle(prefix+"/sync", s.syncHandler(authed)).Methods(http.MethodGet)
	root.Handle(prefix+"/rooms/{roomId}/messages", authed(s.messages)).Methods(http.MethodGet)
	root.Handle(prefix+"/rooms/{roomId}/context/{eventId}", authed(s.context)).Methods(http.MethodGet)
	// Relations and threads (relations.go, threads.go) exist from v1.
	const v1 = "/_matrix/client/{apiVersion:(?:v1)}"
	root.Handle(v1+"/rooms/{roomId}/relations/{eventId}", authed(s.relations)).Methods(http.MethodGet)
	root.Handle(v1+"/rooms/{roomId}/relations/{eventId}/{relType}", authed(s.relations)).Methods(http.MethodGet)
	root.Handle(v1+"/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}", authed(s.relations)).Methods(http.MethodGet)
	root.Handle(v1+"/rooms/{roomId}/threads", authed(s.threads)).Methods(http.MethodGet)
	s.registerEphemeralRoutes(root, prefix, authed)
	s.registerDeviceMessagingRoutes(root, prefix, authed)
}
