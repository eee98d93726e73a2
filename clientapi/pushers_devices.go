package clientapi

import "context"

// A pusher belongs to the device that set it: when the device is deleted
// or logged out (every path goes through dropDeviceKeys or
// dropAllDeviceKeys in keys.go), its pushers go, so that a phone that was
// signed out stops receiving pushes.

func (a *API) dropDevicePushers(ctx context.Context, localpart string, deviceIDs []string) error {
	if p := a.pushStore(); p != nil && len(deviceIDs) > 0 {
		return p.DeleteDevicePushers(ctx, a.userID(localpart), deviceIDs)
	}
	return nil
}

func (a *API) dropAllDevicePushers(ctx context.Context, localpart, exceptDeviceID string) error {
	if p := a.pushStore(); p != nil {
		return p.DeletePushersExcept(ctx, a.userID(localpart), exceptDeviceID)
	}
	return nil
}
