package clientapi

func (a *API) registerAccountRoutes(r *router) {}
