package syncapi

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"
)

// Each pusher has a queue and, while it holds anything, one goroutine
// sending its head: in order, one request at a time, retried with
// exponential backoff (1 s doubling to 5 min) until the notification is
// RetryFor old. Other pushers are not held up.

const (
	sqlPusherForPush = `SELECT data, created_ts FROM syncapi_pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3 AND kind = 'http'`
	// maxGatewayResponse bounds the gateway's answer read.
	maxGatewayResponse = 64 << 10
)

type pusherWorker struct{ queue []*pushJob }

// enqueueLocked adds a job to its pusher's queue, starting the pusher's
// goroutine if it has none. g.mu is held.
func (g *pushGateway) enqueueLocked(j *pushJob) {
	w := g.workers[j.key]
	if w == nil {
		w = &pusherWorker{}
		g.workers[j.key] = w
		g.wg.Add(1)
		go g.work(j.key, w)
	}
	w.queue = append(w.queue, j)
	if len(w.queue) > maxPusherQueue {
		// The head is being sent; drop the oldest waiting behind it.
		dropped := w.queue[1]
		w.queue = append(w.queue[:1], w.queue[2:]...)
		g.log.WithFields(logrus.Fields{"user_id": j.key.userID, "app_id": j.key.appID, "event_id": dropped.eventID}).
			Warn("push gateway queue full; notification dropped")
		g.inFlight--
		for i := range g.pending {
			if g.pending[i].pos == dropped.pos {
				g.pending[i].left--
				break
			}
		}
	}
}

// work sends a pusher's queue until it is empty.
func (g *pushGateway) work(key pusherKey, w *pusherWorker) {
	defer g.wg.Done()
	ctx := g.ctx
	for {
		g.mu.Lock()
		if len(w.queue) == 0 || ctx.Err() != nil {
			delete(g.workers, key)
			g.mu.Unlock()
			return
		}
		job := w.queue[0]
		g.mu.Unlock()
		gone := g.deliver(ctx, job)
		if ctx.Err() != nil {
			// Shutting down: the position stays before this notification,
			// which is sent again after the restart.
			g.mu.Lock()
			delete(g.workers, key)
			g.mu.Unlock()
			return
		}
		g.mu.Lock()
		done := []*pushJob{job}
		w.queue = w.queue[1:]
		if gone {
			done = append(done, w.queue...)
			w.queue = nil
		}
		g.mu.Unlock()
		for _, j := range done {
			g.finish(j.pos)
		}
	}
}

// deliver sends one notification, retrying until it is delivered or given
// up; it returns true when the pusher is gone (removed, or rejected by
// the gateway), so that the rest of its queue is dropped.
func (g *pushGateway) deliver(ctx context.Context, job *pushJob) (gone bool) {
	log := g.log.WithFields(logrus.Fields{"user_id": job.key.userID, "app_id": job.key.appID, "event_id": job.eventID})
	backoff := pushMinBackoff
	for attempt := 1; ; attempt++ {
		if g.now().After(job.deadline) {
			log.WithField("attempts", attempt-1).Warn("push notification given up")
			return false
		}
		retry, gone, err := g.attempt(ctx, job)
		if err == nil || gone {
			return gone
		}
		if ctx.Err() != nil {
			return false
		}
		if !retry {
			log.WithError(err).Warn("push gateway refused the notification; not retried")
			return false
		}
		log.WithError(err).WithField("attempt", attempt).Info("push gateway failed; retrying")
		if g.now().Add(backoff).After(job.deadline) {
			log.WithField("attempts", attempt).Warn("push notification given up")
			return false
		}
		if !sleepCtx(ctx, backoff) {
			return false
		}
		backoff = min(backoff*2, pushMaxBackoff)
		// Read meanwhile (on another device): no longer worth a push.
		if job.pos != badgePos {
			if read, err := g.readAlready(ctx, job.key.userID, job.roomID, job.threadID, job.pos); err == nil && read {
				log.Info("push notification read before the gateway took it; dropped")
				return false
			}
		}
	}
}

// attempt makes one request with the pusher as it is now. retry says
// whether a failure may pass; gone that the pusher no longer exists.
func (g *pushGateway) attempt(ctx context.Context, job *pushJob) (retry, gone bool, err error) {
	var data string
	var created int64
	err = g.db.Reader().QueryRowContext(ctx, sqlPusherForPush, job.key.userID, job.key.appID, job.key.pushKey).Scan(&data, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return false, true, errPusherGone // deleted, or its device logged out
	}
	if err != nil {
		return true, false, err
	}
	url := gjson.Get(data, "url").String()
	body, err := pushBody(job, data, created)
	if err != nil {
		return false, false, err
	}
	rctx, cancel := context.WithTimeout(ctx, pushRequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return false, false, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.client.Do(req)
	if err != nil {
		return true, false, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxGatewayResponse))
	if err != nil {
		return true, false, err
	}
	switch {
	case resp.StatusCode >= 500, resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode == http.StatusRequestTimeout:
		return true, false, fmt.Errorf("push gateway answered %d", resp.StatusCode)
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return false, false, fmt.Errorf("push gateway answered %d", resp.StatusCode)
	}
	rejected := false
	gjson.GetBytes(answer, "rejected").ForEach(func(_, k gjson.Result) bool {
		rejected = k.String() == job.key.pushKey
		return !rejected
	})
	if rejected {
		// The spec: stop sending to a rejected pushkey and remove its pusher.
		if _, err := g.db.Writer().ExecContext(ctx, sqlDeletePusher, job.key.userID, job.key.appID, job.key.pushKey); err != nil {
			return true, false, err
		}
		g.log.WithFields(logrus.Fields{"user_id": job.key.userID, "app_id": job.key.appID}).
			Info("push gateway rejected the pushkey; pusher removed")
		return false, true, nil
	}
	return false, false, nil
}

// pushBody is the request body for one pusher: the notification in the
// pusher's format with the one device, whose data is the pusher's data
// without url.
func pushBody(job *pushJob, data string, createdMillis int64) ([]byte, error) {
	var d map[string]json.RawMessage
	if err := json.Unmarshal([]byte(data), &d); err != nil || d == nil {
		return nil, fmt.Errorf("pusher data is not an object")
	}
	format := gjson.Get(data, "format").String()
	delete(d, "url")
	device := map[string]any{
		"app_id": job.key.appID, "pushkey": job.key.pushKey, "pushkey_ts": createdMillis / 1000,
		"data": d, "tweaks": job.tweaks,
	}
	src := job.full
	if format == "event_id_only" {
		src = job.eventIDOnly
	}
	n := make(map[string]any, len(src)+1)
	for k, v := range src {
		n[k] = v
	}
	n["devices"] = []any{device}
	return json.Marshal(map[string]any{"notification": n})
}
