package clientapi

// registerMiscRoutes adds the endpoints of issue #9 items 5 to 7, one file
// each: spaces and room summaries, reports, tags, login tokens, mutual
// rooms, third-party identifiers, support contacts and server notices.
func (a *API) registerMiscRoutes(r *router) {
	a.registerTagRoutes(r)
	a.registerSupportRoutes(r)
	a.registerThreepidRoutes(r)
	a.registerMutualRoomsRoutes(r)
	a.registerSpaceRoutes(r)
	a.registerLoginTokenRoutes(r)
	a.registerReportRoutes(r)
	a.registerReportAdminRoutes(r.mux)
	a.registerServerNoticeRoutes(r.mux)
	a.registerRoomSummaryRoutes(r)
}
