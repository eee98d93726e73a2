package clientapi

func (a *API) registerFilterRoutes(r *router) {}
