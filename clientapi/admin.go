package clientapi

import "github.com/gorilla/mux"

type nonceStore struct{}

func newNonceStore() *nonceStore { return &nonceStore{} }

func (a *API) registerAdminRoutes(root *mux.Router) {}
