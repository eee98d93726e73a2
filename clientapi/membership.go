package clientapi

func (a *API) registerMembershipRoutes(r *router) {}
