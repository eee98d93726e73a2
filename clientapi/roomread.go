package clientapi

func (a *API) registerRoomReadRoutes(r *router) {}
