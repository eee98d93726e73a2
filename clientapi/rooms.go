package clientapi

import (
	"errors"

	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// registerRoomRoutes adds the endpoints on rooms; each group lives in its
// own file.
func (a *API) registerRoomRoutes(r *router) {
	a.registerCreateRoomRoutes(r)
	a.registerMembershipRoutes(r)
	a.registerSendRoutes(r)
	a.registerRoomReadRoutes(r)
	a.registerDirectoryRoutes(r)
}

// roomError maps the roomserver's errors to Matrix errors: the one place
// where that happens for every room endpoint.
func roomError(err error) error {
	var (
		notAllowed *rsapi.NotAllowedError
		badEvent   *rsapi.BadEventError
		tooLarge   *rsapi.TooLargeError
	)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &notAllowed):
		return httputil.Forbidden("%s", notAllowed.Reason)
	case errors.As(err, &badEvent):
		return httputil.BadJSON("%s", badEvent.Reason)
	case errors.As(err, &tooLarge):
		return httputil.TooLarge("%s", tooLarge.Reason)
	case errors.Is(err, rsapi.ErrRoomNotFound):
		return httputil.NotFound("Unknown room")
	case errors.Is(err, rsapi.ErrEventNotFound):
		return httputil.NotFound("Unknown event")
	case errors.Is(err, rsapi.ErrUnsupportedRoomVersion):
		return httputil.UnsupportedRoomV("This server does not support that room version")
	}
	return err
}
