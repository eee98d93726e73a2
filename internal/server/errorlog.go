package server

import (
	"log"

	"github.com/sirupsen/logrus"
)

// logrusErrorLog sends net/http's own messages (TLS handshake errors and
// the like) to logrus at debug level: they are noise on a public server.
func logrusErrorLog() *log.Logger {
	return log.New(logrus.StandardLogger().WriterLevel(logrus.DebugLevel), "", 0)
}
