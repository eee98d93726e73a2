package storage

import "time"

// NowMillis is the current time in milliseconds since the Unix epoch, the
// unit Matrix uses for timestamps.
func NowMillis() int64 { return time.Now().UnixMilli() }
