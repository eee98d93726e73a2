package clientapi

func (a *API) registerDirectoryRoutes(r *router) {}
