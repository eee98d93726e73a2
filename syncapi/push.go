package syncapi

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/pushrules"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// Push rules. As the consumer stores each event it evaluates the event
// against the push rules of every local member of the room (and of a
// local user it invites), and records a notification for each one whose
// rules say notify, in the same transaction: unread counts (unread.go)
// and GET /notifications (notifications.go) are read from those records,
// so the counts change in the very sync that brings the event.
//
// Rules are the m.push_rules account data merged with the server
// defaults (package pushrules), compiled once per user and cached until
// the client API reports a change (PushRulesChanged). Evaluation reads
// the room's facts (member count, power levels, display names) only when
// a condition asks for them, once per event.
//
// Notifications go to the users' push gateways through pushgateway.go.

// WithPush turns push rule evaluation on: notifications are recorded, and
// /sync's account data carries m.push_rules from a user's first sync.
func WithPush() Option {
	return func(s *SyncAPI) {
		p := &pushEvaluator{serverName: s.serverName, accounts: s.accounts, cache: map[string]userRules{},
			gens: map[string]uint64{}, log: logrus.WithField("component", "syncapi.push")}
		s.consumer.push = p
		s.accounts = &pushAccountData{Accounts: s.accounts, serverName: s.serverName, log: p.log}
	}
}

func pushOf(c *consumer) *pushEvaluator { return c.push }

// recordNotifications evaluates a stored event for the room's local users
// (consumer.go calls it in the transaction that stores the event). Without
// WithPush it does nothing.
func (c *consumer) recordNotifications(ctx context.Context, tx *sql.Tx, out rsapi.OutputEvent) error {
	p := pushOf(c)
	if p == nil {
		return nil
	}
	return p.record(ctx, tx, out, c.members)
}

// PushRulesChanged drops a user's compiled rules after the client API
// changed them.
func (s *SyncAPI) PushRulesChanged(userID string) {
	if p := pushOf(s.consumer); p != nil {
		p.invalidate(userID)
	}
}

// maxCachedRules bounds the compiled rules kept; past it the cache starts
// over.
const maxCachedRules = 10000

type pushEvaluator struct {
	serverName string
	accounts   Accounts
	log        *logrus.Entry

	mu    sync.Mutex
	cache map[string]userRules
	// gens count each user's invalidations, so that rules loaded before
	// a change are not cached after it.
	gens map[string]uint64
	// gateway sends notifications to push gateways (pushgateway.go); nil without WithPushGateway.
	gateway *pushGateway
}

func (p *pushEvaluator) invalidate(userID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.cache, userID)
	p.gens[userID]++
}

// rules returns a user's compiled rules.
func (p *pushEvaluator) rules(ctx context.Context, userID string) (*pushrules.Compiled, error) {
	r, err := p.userRules(ctx, userID)
	return r.compiled, err
}

// userRules are a user's compiled rules, and whether they are the
// server's defaults unchanged.
type userRules struct {
	compiled *pushrules.Compiled
	defaults bool
}

func (p *pushEvaluator) userRules(ctx context.Context, userID string) (userRules, error) {
	p.mu.Lock()
	c, ok := p.cache[userID]
	gen := p.gens[userID]
	p.mu.Unlock()
	if ok {
		return c, nil
	}
	raw, err := p.accounts.AccountData(ctx, localpartOf(userID), "", pushrules.AccountDataType)
	if err != nil && !errors.Is(err, accounts.ErrNotFound) {
		return userRules{}, err
	}
	rs, err := pushrules.Load(raw, userID)
	if err != nil {
		p.log.WithError(err).WithField("user_id", userID).Warn("stored push rules unreadable; using the defaults")
	}
	c = userRules{compiled: pushrules.Compile(rs, userID), defaults: sameRules(rs, pushrules.Merge(nil, userID))}
	p.mu.Lock()
	if p.gens[userID] == gen {
		if len(p.cache) >= maxCachedRules {
			p.cache = map[string]userRules{}
		}
		p.cache[userID] = c
	}
	p.mu.Unlock()
	return c, nil
}

// sameRules compares two rulesets as they are stored (a ruleset read back
// differs from the built one in nil and empty lists only).
func sameRules(a, b pushrules.Ruleset) bool {
	ja, errA := pushrules.Encode(a)
	jb, errB := pushrules.Encode(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}

func localpartOf(userID string) string {
	lp, _, _ := strings.Cut(strings.TrimPrefix(userID, "@"), ":")
	return lp
}

const (
	// The room's joined members of this server, with their member events.
	sqlLocalJoinedMembers = `SELECT s.state_key, e.event_json FROM syncapi_current_state s
		JOIN syncapi_events e ON e.event_id = s.event_id
		WHERE s.room_id = $1 AND s.type = 'm.room.member' AND s.membership = 'join' AND s.state_key LIKE $2 ESCAPE '!'`
	sqlJoinedMemberCount = `SELECT COUNT(*) FROM syncapi_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'`
	sqlInsertNotification = `INSERT INTO syncapi_notifications (user_id, pos, room_id, event_id, thread_id, highlight, actions, ts)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (user_id, pos) DO NOTHING`
	sqlEventJSONByID = `SELECT event_json FROM syncapi_events WHERE event_id = $1`
)

// mainThread is the thread_id of notifications outside threads, as in
// threaded receipts.
const mainThread = "main"

// pushTarget is a local user the event is evaluated for, with their
// display name in the room ("" for an invitee).
type pushTarget = localMember

func (p *pushEvaluator) record(ctx context.Context, tx *sql.Tx, out rsapi.OutputEvent, members *localMembers) error {
	ev := out.Event
	sender := string(ev.SenderID())
	targets, err := p.targets(ctx, tx, out, members)
	if err != nil {
		return err
	}
	// An invite notifies its local invitee, who is not joined yet.
	if ev.Type() == spec.MRoomMember && ev.StateKey() != nil && p.isLocal(*ev.StateKey()) {
		if m, _ := ev.Membership(); m == spec.Invite {
			targets = append(targets, pushTarget{userID: *ev.StateKey()})
		}
	}
	if len(targets) == 0 {
		return nil
	}
	event := pushrules.NewEvent(ev.JSON())
	room := &pushRoom{ctx: ctx, tx: tx, roomID: out.RoomID, sender: sender, version: ev.Version(), members: -1,
		counts: members, countCacheable: len(out.AddsState) == 0 && len(out.RemovesState) == 0}
	thread := ""
	// The default rules never notify of a member event other than an
	// invite of the user (.m.rule.suppress_notices, .m.rule.invite_for_me
	// and .m.rule.member_event come first): users with those rules are
	// not evaluated for it, so a join into a big room costs nothing per
	// member.
	memberEvent := ev.Type() == spec.MRoomMember && ev.StateKey() != nil
	for _, t := range targets {
		if t.userID == sender {
			continue
		}
		r, err := p.userRules(ctx, t.userID)
		if err != nil {
			return err
		}
		if memberEvent && r.defaults && *ev.StateKey() != t.userID {
			continue
		}
		rules := r.compiled
		o := rules.Evaluate(event, &pushMember{pushRoom: room, userID: t.userID, target: t})
		if room.err != nil {
			return room.err
		}
		if !o.Notify {
			continue
		}
		if thread == "" {
			if thread, err = threadOf(ctx, tx, ev.JSON()); err != nil {
				return err
			}
		}
		actions, _ := json.Marshal(o.Actions)
		if _, err := tx.ExecContext(ctx, sqlInsertNotification, t.userID, out.Position, out.RoomID, ev.EventID(),
			thread, o.Highlight, string(actions), storage.NowMillis()); err != nil {
			return err
		}
	}
	return nil
}

// targets are the local users an event is evaluated for, from the cached
// member set with their display names (members.go): reading every
// member's event per event made big rooms costly. After a change of
// several members at once (state resolution) they are read from the
// stored state instead.
func (p *pushEvaluator) targets(ctx context.Context, tx *sql.Tx, out rsapi.OutputEvent, members *localMembers) ([]pushTarget, error) {
	if members != nil {
		joined, ok, err := members.joinedAfter(ctx, out)
		if err != nil {
			return nil, err
		}
		if ok {
			return joined, nil
		}
	}
	// Read in the consumer's transaction, which holds the change.
	return readLocalMembers(ctx, tx, out.RoomID, ":"+p.serverName)
}

func (p *pushEvaluator) isLocal(userID string) bool {
	return strings.HasPrefix(userID, "@") && strings.HasSuffix(userID, ":"+p.serverName)
}

// likeEscape makes s match literally in a LIKE pattern with ESCAPE '!'.
func likeEscape(s string) string {
	return strings.NewReplacer("!", "!!", "%", "!%", "_", "!_").Replace(s)
}

// threadOf is the thread an event belongs to: the root of its m.thread
// relation, or of the event it relates to, following at most three
// relations as the spec suggests; "main" otherwise.
func threadOf(ctx context.Context, tx *sql.Tx, eventJSON []byte) (string, error) {
	rel := gjson.GetBytes(eventJSON, `content.m\.relates_to`)
	for hop := 0; hop < 3; hop++ {
		parent := rel.Get("event_id")
		if !rel.IsObject() || parent.Type != gjson.String || parent.Str == "" {
			return mainThread, nil
		}
		if rel.Get("rel_type").String() == "m.thread" {
			return parent.Str, nil
		}
		var js string
		err := tx.QueryRowContext(ctx, sqlEventJSONByID, parent.Str).Scan(&js)
		if errors.Is(err, sql.ErrNoRows) {
			return mainThread, nil
		}
		if err != nil {
			return "", err
		}
		rel = gjson.Get(js, `content.m\.relates_to`)
	}
	return mainThread, nil
}

// pushRoom is what one event's evaluation knows about its room, loaded
// when a condition first asks and shared by the room's users. Database
// errors are kept in err, as Env's methods cannot return them.
type pushRoom struct {
	ctx     context.Context
	tx      *sql.Tx
	roomID  string
	sender  string
	version gomatrixserverlib.RoomVersion
	err     error

	members int // -1 until loaded
	// counts, when set, keeps member counts between events; only an event
	// that changes no state may fill it.
	counts         *localMembers
	countCacheable bool

	powerLoaded bool
	senderLevel int64
	power       gomatrixserverlib.PowerLevelContent
}

func (r *pushRoom) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *pushRoom) MemberCount() int {
	if r.members < 0 {
		load := func() (int, error) {
			var n int
			err := r.tx.QueryRowContext(r.ctx, sqlJoinedMemberCount, r.roomID).Scan(&n)
			return n, err
		}
		var err error
		if r.counts != nil {
			r.members, err = r.counts.memberCount(r.roomID, r.countCacheable, load)
		} else {
			r.members, err = load()
		}
		if err != nil {
			r.members = 0
			r.fail(err)
		}
	}
	return r.members
}

func (r *pushRoom) SenderPowerLevel() int64 {
	r.loadPower()
	return r.senderLevel
}

func (r *pushRoom) NotificationPowerLevel(key string) int64 {
	r.loadPower()
	return r.power.NotificationLevel(key)
}

// currentState returns a current state event's JSON, "" when there is none.
func (r *pushRoom) currentState(evType string) string {
	var version, js string
	err := r.tx.QueryRowContext(r.ctx, sqlCurrentStateEvent, r.roomID, evType, "").Scan(&version, &js)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		r.fail(err)
	}
	return js
}

// loadPower reads the power levels as the auth rules see them: without a
// power levels event the creator has 100 and others 0; in room versions
// with privileged creators the creators outrank everyone.
func (r *pushRoom) loadPower() {
	if r.powerLoaded {
		return
	}
	r.powerLoaded = true
	r.power.Defaults()
	create := gjson.Parse(r.currentState(spec.MRoomCreate))
	verImpl, err := gomatrixserverlib.GetRoomVersion(r.version)
	if err != nil {
		return // an unknown version: the sender has level 0
	}
	if verImpl.PrivilegedCreators() {
		creators := []string{create.Get("sender").String()}
		create.Get("content.additional_creators").ForEach(func(_, v gjson.Result) bool {
			creators = append(creators, v.String())
			return true
		})
		for _, c := range creators {
			if c != "" && c == r.sender {
				r.senderLevel = math.MaxInt64
				return
			}
		}
	}
	pl := r.currentState(spec.MRoomPowerLevels)
	if pl == "" {
		// The creator: the create event's creator field up to room
		// version 10, its sender after.
		creator := create.Get("content.creator").String()
		if creator == "" {
			creator = create.Get("sender").String()
		}
		if creator == r.sender {
			r.senderLevel = 100
		}
		return
	}
	if err := verImpl.ParsePowerLevels([]byte(gjson.Get(pl, "content").Raw), &r.power); err != nil {
		r.power.Defaults()
		return
	}
	r.senderLevel = r.power.UserLevel(spec.SenderID(r.sender))
}

// pushMember is the Env of one user: the room's facts and their display
// name there.
type pushMember struct {
	*pushRoom
	userID string
	target pushTarget
}

func (m *pushMember) DisplayName() string { return m.target.displayName }

// pushAccountData serves m.push_rules in /sync's account data merged with
// the server defaults. A user who never changed their rules gets the
// defaults stored on their first sync (under the lock the client API's
// rule edits take), so that the first sync carries them and later syncs
// are incremental from there.
type pushAccountData struct {
	Accounts
	serverName string
	log        *logrus.Entry
}

func (a *pushAccountData) AccountDataSince(ctx context.Context, localpart string, since int64) ([]accounts.AccountDataEntry, int64, error) {
	entries, pos, err := a.Accounts.AccountDataSince(ctx, localpart, since)
	if err != nil {
		return nil, 0, err
	}
	userID := "@" + localpart + ":" + a.serverName
	if since == 0 && !hasPushRules(entries) {
		// A first sync of a user with no stored rules: store the defaults
		// and read again, so that the entry and the position returned
		// agree (the next sync does not bring the rules a second time).
		if err := a.storeDefaults(ctx, localpart, userID); err != nil {
			return nil, 0, err
		}
		if entries, pos, err = a.Accounts.AccountDataSince(ctx, localpart, since); err != nil {
			return nil, 0, err
		}
	}
	for i, e := range entries {
		if e.RoomID != "" || e.Type != pushrules.AccountDataType {
			continue
		}
		rs, err := pushrules.Load(e.Content, userID)
		if err != nil {
			a.log.WithError(err).WithField("user_id", userID).Warn("stored push rules unreadable; serving the defaults")
		}
		if content, err := pushrules.Encode(rs); err == nil {
			entries[i].Content = content
		}
	}
	return entries, pos, nil
}

func hasPushRules(entries []accounts.AccountDataEntry) bool {
	for _, e := range entries {
		if e.RoomID == "" && e.Type == pushrules.AccountDataType {
			return true
		}
	}
	return false
}

// storeDefaults stores the default rules unless the user has rules by
// now.
func (a *pushAccountData) storeDefaults(ctx context.Context, localpart, userID string) error {
	unlock := pushrules.LockUser(userID)
	defer unlock()
	_, err := a.Accounts.AccountData(ctx, localpart, "", pushrules.AccountDataType)
	if !errors.Is(err, accounts.ErrNotFound) {
		return err // nil: stored meanwhile
	}
	content, err := pushrules.Encode(pushrules.Defaults(userID))
	if err != nil {
		return err
	}
	if _, err := a.Accounts.PutAccountData(ctx, localpart, "", pushrules.AccountDataType, content); err != nil &&
		!errors.Is(err, accounts.ErrNotFound) {
		return err
	}
	return nil
}
