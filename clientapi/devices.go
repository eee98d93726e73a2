package clientapi

func (a *API) registerDeviceRoutes(r *router) {}
