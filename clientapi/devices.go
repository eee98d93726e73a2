package clientapi

import (
	"errors"
	"net/http"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
)

func (a *API) registerDeviceRoutes(r *router) {
	r.authed(v3, "/devices", a.getDevices, http.MethodGet)
	r.authed(v3, "/devices/{deviceId}", a.getDevice, http.MethodGet)
	r.authed(v3, "/devices/{deviceId}", a.putDevice, http.MethodPut)
	r.authed(v3, "/devices/{deviceId}", noGuests(a.deleteDevice), http.MethodDelete)
	r.authed(v3, "/delete_devices", noGuests(a.deleteDevices), http.MethodPost)
}

// deviceJSON is a device as the spec's client_device object: fields that
// are unknown are left out.
func deviceJSON(d *accounts.Device) map[string]any {
	m := map[string]any{"device_id": d.DeviceID}
	if d.DisplayName != "" {
		m["display_name"] = d.DisplayName
	}
	if d.LastSeenIP != "" {
		m["last_seen_ip"] = d.LastSeenIP
	}
	if d.LastSeenTS != 0 {
		m["last_seen_ts"] = d.LastSeenTS
	}
	return m
}

func (a *API) getDevices(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	devs, err := a.accounts.Devices(r.Context(), s.Localpart)
	if err != nil {
		return err
	}
	list := make([]map[string]any, len(devs))
	for i := range devs {
		list[i] = deviceJSON(&devs[i])
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"devices": list})
	return nil
}

func (a *API) getDevice(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	d, err := a.accounts.Device(r.Context(), s.Localpart, httputil.Vars(r)["deviceId"])
	if errors.Is(err, accounts.ErrNotFound) {
		return httputil.NotFound("Unknown device")
	}
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, deviceJSON(d))
	return nil
}

func (a *API) putDevice(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	var req struct {
		DisplayName *string `json:"display_name"`
	}
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	deviceID := httputil.Vars(r)["deviceId"]
	var err error
	if req.DisplayName == nil {
		// Nothing to change, but an unknown device is still a 404.
		_, err = a.accounts.Device(r.Context(), s.Localpart, deviceID)
	} else {
		if len(*req.DisplayName) > maxDisplayNameLength {
			return httputil.InvalidParam("display_name is longer than %d bytes", maxDisplayNameLength)
		}
		err = a.accounts.SetDeviceDisplayName(r.Context(), s.Localpart, deviceID, *req.DisplayName)
	}
	if errors.Is(err, accounts.ErrNotFound) {
		return httputil.NotFound("Unknown device")
	}
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) deleteDevice(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	var req struct {
		Auth *uiaaAuth `json:"auth"`
	}
	// Clients often send the first, unauthenticated DELETE without a body.
	if err := readOptionalJSON(r, &req); err != nil {
		return err
	}
	if _, err := a.requireUIAA(r, req.Auth, s.Localpart, passwordFlows, nil); err != nil {
		return err
	}
	if err := a.accounts.DeleteDevices(r.Context(), s.Localpart, []string{httputil.Vars(r)["deviceId"]}); err != nil {
		return err
	}
	// The device's encryption keys go too (keys.go).
	if err := a.dropDeviceKeys(r.Context(), s.Localpart, []string{httputil.Vars(r)["deviceId"]}); err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) deleteDevices(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	var req struct {
		Auth    *uiaaAuth `json:"auth"`
		Devices *[]string `json:"devices"`
	}
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	if req.Devices == nil {
		return httputil.MissingParam("devices is required")
	}
	if _, err := a.requireUIAA(r, req.Auth, s.Localpart, passwordFlows, nil); err != nil {
		return err
	}
	// Only the user's existing devices are deleted, so the work done
	// follows the user's devices and not the length of the list sent.
	devs, err := a.accounts.Devices(r.Context(), s.Localpart)
	if err != nil {
		return err
	}
	wanted := make(map[string]bool, len(*req.Devices))
	for _, id := range *req.Devices {
		wanted[id] = true
	}
	var ids []string
	for _, d := range devs {
		if wanted[d.DeviceID] {
			ids = append(ids, d.DeviceID)
		}
	}
	if len(ids) > 0 {
		if err := a.accounts.DeleteDevices(r.Context(), s.Localpart, ids); err != nil {
			return err
		}
		// The devices' encryption keys go too (keys.go).
		if err := a.dropDeviceKeys(r.Context(), s.Localpart, ids); err != nil {
			return err
		}
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

// readOptionalJSON is httputil.ReadJSON that takes an empty body as {}.
func readOptionalJSON(r *http.Request, dst any) error {
	data, err := httputil.ReadBody(r)
	if err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	return httputil.DecodeJSONObject(data, dst)
}

// noGuests refuses guests the endpoints the spec does not open to them.
func noGuests(h AuthedHandler) AuthedHandler {
	return func(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
		if s.IsGuest {
			return httputil.GuestForbidden("Guests cannot use this endpoint")
		}
		return h(w, r, s)
	}
}
