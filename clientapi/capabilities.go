package clientapi

func (a *API) registerCapabilitiesRoutes(r *router) {}
