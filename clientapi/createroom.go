package clientapi

func (a *API) registerCreateRoomRoutes(r *router) {}
