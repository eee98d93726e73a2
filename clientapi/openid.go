package clientapi

import (
	"context"
	"net/http"
	"time"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// OpenID (POST /user/{userId}/openid/request_token): a token a user hands
// to a third party, which asks our federation API's
// /_matrix/federation/v1/openid/userinfo who it belongs to.

// OpenIDTokenIssuer makes OpenID tokens: the federation API keeps them
// (federationapi/reads_openid.go), since its userinfo endpoint checks them.
type OpenIDTokenIssuer interface {
	IssueOpenIDToken(ctx context.Context, userID string) (token string, lifetime time.Duration, err error)
}

func (a *API) registerOpenIDRoutes(r *router) {
	r.authed(v3, "/user/{userId}/openid/request_token", a.requestOpenIDToken, http.MethodPost)
}

func (a *API) requestOpenIDToken(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	issuer := a.openID
	if issuer == nil {
		return httputil.Unrecognized("OpenID is not available on this server")
	}
	userID := a.userID(s.Localpart)
	if httputil.Vars(r)["userId"] != userID {
		return httputil.Forbidden("You may only request OpenID tokens for yourself")
	}
	var body map[string]any
	if err := httputil.ReadJSON(r, &body); err != nil {
		return err
	}
	token, lifetime, err := issuer.IssueOpenIDToken(r.Context(), userID)
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{
		"access_token":       token,
		"token_type":         "Bearer",
		"matrix_server_name": a.cfg.ServerName,
		"expires_in":         int64(lifetime / time.Second),
	})
	return nil
}
