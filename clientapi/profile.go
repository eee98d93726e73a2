package clientapi

func (a *API) registerProfileRoutes(r *router) {}
