package clientapi

func (a *API) registerAccountDataRoutes(r *router) {}
