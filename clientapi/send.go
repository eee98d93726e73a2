package clientapi

func (a *API) registerSendRoutes(r *router) {}
