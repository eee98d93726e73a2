package stateres

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/roomserver/testroom"
)

// TestScenarios runs the state resolution cases in testdata/*.txt. A new
// case is a new file; the language is described in testdata/README.md.
func TestScenarios(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios: %v", err)
	}
	for _, file := range files {
		sc := parseScenario(t, file)
		for _, v := range sc.versions {
			t.Run(strings.TrimSuffix(filepath.Base(file), ".txt")+"/v"+v, func(t *testing.T) {
				sc.run(t, v)
			})
		}
	}
}

type scenarioLine struct {
	pos      string // file:line
	versions []string
	words    []string
}

type scenario struct {
	versions []string
	lines    []scenarioLine
}

func parseScenario(t *testing.T, file string) *scenario {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := &scenario{}
	scanner := bufio.NewScanner(f)
	for n := 1; scanner.Scan(); n++ {
		text := strings.TrimSpace(scanner.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		l := scenarioLine{pos: fmt.Sprintf("%s:%d", file, n)}
		if strings.HasPrefix(text, "[") {
			end := strings.Index(text, "]")
			if end < 0 {
				t.Fatalf("%s: unclosed version filter", l.pos)
			}
			l.versions = versionList(t, l.pos, text[1:end])
			text = strings.TrimSpace(text[end+1:])
		}
		if l.words, err = splitWords(text); err != nil {
			t.Fatalf("%s: %v", l.pos, err)
		}
		if l.words[0] == "versions" {
			sc.versions = versionList(t, l.pos, strings.Join(l.words[1:], ","))
			continue
		}
		sc.lines = append(sc.lines, l)
	}
	if len(sc.versions) == 0 {
		t.Fatalf("%s: no versions line", file)
	}
	return sc
}

// versionList reads "1,2,10-12" (or spaces instead of commas).
func versionList(t *testing.T, pos, s string) []string {
	t.Helper()
	var out []string
	for _, part := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		lo, hi, isRange := strings.Cut(part, "-")
		if !isRange {
			hi = lo
		}
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil || a > b {
			t.Fatalf("%s: bad version list %q", pos, s)
		}
		for v := a; v <= b; v++ {
			out = append(out, strconv.Itoa(v))
		}
	}
	return out
}

// splitWords splits on spaces, keeping "quoted strings" (Go syntax) and
// {JSON objects} whole.
func splitWords(s string) ([]string, error) {
	var words []string
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		switch s[0] {
		case '"':
			end := 1
			for ; end < len(s) && s[end] != '"'; end++ {
				if s[end] == '\\' {
					end++
				}
			}
			if end >= len(s) {
				return nil, fmt.Errorf("unclosed quote")
			}
			w, err := strconv.Unquote(s[:end+1])
			if err != nil {
				return nil, err
			}
			words = append(words, w)
			s = s[end+1:]
		case '{':
			depth, inString, end := 0, false, 0
			for ; end < len(s); end++ {
				c := s[end]
				switch {
				case inString && c == '\\':
					end++
				case c == '"':
					inString = !inString
				case !inString && c == '{':
					depth++
				case !inString && c == '}':
					depth--
				}
				if depth == 0 {
					break
				}
			}
			if depth != 0 {
				return nil, fmt.Errorf("unbalanced JSON object")
			}
			words = append(words, s[:end+1])
			s = s[end+1:]
		default:
			end := strings.IndexAny(s, " \t")
			if end < 0 {
				end = len(s)
			}
			words = append(words, s[:end])
			s = s[end:]
		}
	}
	return words, nil
}

// scenarioRun is one scenario being run in one room version.
type scenarioRun struct {
	t        *testing.T
	version  string
	servers  map[string]*testroom.Server
	users    map[string]*testroom.User
	room     *testroom.Room
	branches map[string]*testroom.Room
	current  *testroom.Room
	labels   map[string]string // label -> event ID
	names    map[string]string // event ID -> label
	sets     [][]gomatrixserverlib.PDU
	result   testroom.State
	// gmslDiffers: gomatrixserverlib's v2 is known to get this case wrong.
	gmslDiffers bool
}

func (sc *scenario) run(t *testing.T, version string) {
	r := &scenarioRun{
		t: t, version: version,
		servers:  map[string]*testroom.Server{},
		users:    map[string]*testroom.User{},
		branches: map[string]*testroom.Room{},
		labels:   map[string]string{},
		names:    map[string]string{},
	}
	var at *scenarioLine
	defer func() {
		// testroom fails the test itself when a step goes wrong; say where.
		if t.Failed() && at != nil {
			t.Logf("at %s: %s", at.pos, strings.Join(at.words, " "))
		}
	}()
	for i, l := range sc.lines {
		if l.versions != nil && !slices.Contains(l.versions, version) {
			continue
		}
		at = &sc.lines[i]
		if err := r.do(l.words); err != nil {
			t.Fatalf("%s: %s: %v", l.pos, strings.Join(l.words, " "), err)
		}
	}
	if r.result == nil {
		t.Fatal("the scenario never resolves")
	}
}

func (r *scenarioRun) user(name string) *testroom.User {
	if u, ok := r.users[name]; ok {
		return u
	}
	localpart, server, ok := strings.Cut(name, "@")
	if !ok {
		server = "a.test"
	}
	s, ok := r.servers[server]
	if !ok {
		s = testroom.NewServer(r.t, server)
		r.servers[server] = s
	}
	u := s.User(localpart)
	r.users[localpart] = u
	return u
}

func (r *scenarioRun) label(name string, ev gomatrixserverlib.PDU) error {
	if _, dup := r.labels[name]; dup {
		return fmt.Errorf("label %q used twice", name)
	}
	r.labels[name] = ev.EventID()
	r.names[ev.EventID()] = name
	return nil
}

func (r *scenarioRun) describe(ev gomatrixserverlib.PDU) string {
	if ev == nil {
		return "none"
	}
	if name, ok := r.names[ev.EventID()]; ok {
		return name
	}
	return fmt.Sprintf("unlabelled %s from %s %s", ev.Type(), ev.SenderID(), ev.Content())
}

func (r *scenarioRun) do(words []string) error {
	t := r.t
	cmd, args := words[0], words[1:]
	switch cmd {
	case "users":
		for _, a := range args {
			r.user(a)
		}
		return nil
	case "room":
		if len(args) < 1 {
			return fmt.Errorf("want: room CREATOR [joinrule=RULE] [creators=U,U]")
		}
		var opts []testroom.RoomOption
		for _, o := range args[1:] {
			k, v, _ := strings.Cut(o, "=")
			switch k {
			case "joinrule":
				opts = append(opts, testroom.JoinRule(v))
			case "creators":
				for _, name := range strings.Split(v, ",") {
					opts = append(opts, testroom.AdditionalCreators(r.user(name)))
				}
			default:
				return fmt.Errorf("unknown room option %q", o)
			}
		}
		r.room = testroom.New(t, r.version, r.user(args[0]), opts...)
		for i, name := range []string{"create", "creatorjoin", "pl0", "jr0", "hv0"} {
			if err := r.label(name, r.room.Events()[i]); err != nil {
				return err
			}
		}
		r.branches["main"], r.current = r.room, r.room
		return nil
	case "branch":
		if r.room == nil {
			return fmt.Errorf("branch before room")
		}
		if len(args) != 1 && (len(args) != 3 || args[1] != "from") {
			return fmt.Errorf("want: branch NAME [from BRANCH]")
		}
		if b, ok := r.branches[args[0]]; ok {
			if len(args) == 3 {
				return fmt.Errorf("branch %s exists already", args[0])
			}
			r.current = b
			return nil
		}
		from := "main"
		if len(args) == 3 {
			from = args[2]
		}
		parent, ok := r.branches[from]
		if !ok {
			return fmt.Errorf("no branch %s", from)
		}
		r.current = parent.Fork()
		r.branches[args[0]] = r.current
		return nil
	case "gomatrixserverlib":
		if len(args) != 1 || args[0] != "differs" {
			return fmt.Errorf("want: gomatrixserverlib differs")
		}
		r.gmslDiffers = true
		return nil
	case "resolve":
		r.sets = nil
		for _, name := range args {
			b, ok := r.branches[name]
			if !ok {
				return fmt.Errorf("no branch %s", name)
			}
			r.sets = append(r.sets, b.State().Events())
		}
		return r.resolve()
	case "expect":
		if len(args) != 3 {
			return fmt.Errorf("want: expect TYPE STATE_KEY LABEL|none")
		}
		if r.result == nil {
			return fmt.Errorf("expect before resolve")
		}
		stateKey := args[1]
		if u, ok := r.users[stateKey]; ok {
			stateKey = u.ID()
		}
		got := r.result.Get(args[0], stateKey)
		if args[2] == "none" {
			if got != nil {
				t.Errorf("(%s, %q): got %s, want none", args[0], stateKey, r.describe(got))
			}
			return nil
		}
		want, ok := r.labels[args[2]]
		if !ok {
			return fmt.Errorf("no event labelled %q", args[2])
		}
		if got == nil || got.EventID() != want {
			t.Errorf("(%s, %q): got %s, want %s", args[0], stateKey, r.describe(got), args[2])
		}
		return nil
	}
	return r.step(cmd, args)
}

// step builds one event on the current branch.
func (r *scenarioRun) step(cmd string, args []string) error {
	if r.current == nil {
		return fmt.Errorf("%s before room", cmd)
	}
	var opts []testroom.EventOption
	var label string
	for len(args) > 0 {
		switch n := len(args); {
		case args[n-1] == "rejected":
			opts = append(opts, testroom.Rejected())
			args = args[:n-1]
			continue
		case n >= 2 && args[n-2] == "as":
			label = args[n-1]
			args = args[:n-2]
			continue
		}
		break
	}
	want := map[string]int{
		"join": 1, "leave": 1, "invite": 2, "ban": 2, "kick": 2, "send": 2, "topic": 2,
		"level": 3, "eventlevel": 3, "joinrule": 2, "pl": 2, "state": 4,
	}
	n, ok := want[cmd]
	if !ok {
		return fmt.Errorf("unknown command %q", cmd)
	}
	if len(args) != n {
		return fmt.Errorf("%s wants %d arguments, got %d", cmd, n, len(args))
	}
	b := r.current
	switch cmd {
	case "join":
		b.Join(r.user(args[0]), opts...)
	case "leave":
		b.Leave(r.user(args[0]), opts...)
	case "invite":
		b.Invite(r.user(args[0]), r.user(args[1]), opts...)
	case "ban":
		b.Ban(r.user(args[0]), r.user(args[1]), opts...)
	case "kick":
		b.Kick(r.user(args[0]), r.user(args[1]), opts...)
	case "send":
		b.Send(r.user(args[0]), args[1], opts...)
	case "topic":
		b.SetState(r.user(args[0]), spec.MRoomTopic, "", map[string]any{"topic": args[1]}, opts...)
	case "level":
		level, err := strconv.ParseInt(args[2], 10, 64)
		if err != nil {
			return err
		}
		b.SetUserLevel(r.user(args[0]), r.user(args[1]), level, opts...)
	case "eventlevel":
		level, err := strconv.ParseInt(args[2], 10, 64)
		if err != nil {
			return err
		}
		content := b.PowerLevelsContent()
		events, _ := content["events"].(map[string]any)
		if events == nil {
			events = map[string]any{}
		}
		events[args[1]] = level
		content["events"] = events
		b.SetPowerLevels(r.user(args[0]), content, opts...)
	case "joinrule":
		b.SetState(r.user(args[0]), spec.MRoomJoinRules, "", map[string]any{"join_rule": args[1]}, opts...)
	case "pl":
		b.SetPowerLevels(r.user(args[0]), jsonRaw(args[1]), opts...)
	case "state":
		b.SetState(r.user(args[0]), args[1], args[2], jsonRaw(args[3]), opts...)
	}
	if label != "" {
		return r.label(label, b.Last())
	}
	return nil
}

type jsonRaw string

func (j jsonRaw) MarshalJSON() ([]byte, error) { return []byte(j), nil }

// resolve runs Resolve on the chosen sets and checks what holds for every
// case: one event per key, unconflicted keys kept, the v12 room ID, and in
// v2–v11 rooms whether gomatrixserverlib's v2 agrees.
func (r *scenarioRun) resolve() error {
	t := r.t
	ctx := context.Background()
	version := r.room.Version()
	resolved, err := Resolve(ctx, version, r.sets, r.room.AuthChain, r.room.IsRejected)
	if err != nil {
		return err
	}
	if r.result, err = testroom.StateFromEvents(resolved); err != nil {
		return fmt.Errorf("resolved state: %w", err)
	}
	// Keys on which every set agrees keep their event.
	for k, ev := range unconflictedIn(r.sets) {
		if got := r.result[k]; got == nil || got.EventID() != ev.EventID() {
			t.Errorf("unconflicted (%s, %q) changed from %s to %s", k.EventType, k.StateKey, r.describe(ev), r.describe(got))
		}
	}
	verImpl := gomatrixserverlib.MustGetRoomVersion(version)
	if verImpl.DomainlessRoomIDs() {
		if create := r.result.Get(spec.MRoomCreate, ""); create == nil || "!"+create.EventID()[1:] != r.room.ID() {
			t.Errorf("room ID %s is not the resolved create event's hash", r.room.ID())
		}
	}
	if verImpl.StateResAlgorithm() == gomatrixserverlib.StateResV2 {
		gmsl, err := gomatrixserverlibV2(ctx, r.room, r.sets)
		agree := err == nil && slices.Equal(eventIDs(gmsl), eventIDs(resolved))
		switch {
		case r.gmslDiffers && agree:
			t.Errorf("gomatrixserverlib's v2 now gets this case right: drop the 'gomatrixserverlib differs' line")
		case !r.gmslDiffers && !agree:
			t.Errorf("gomatrixserverlib's v2 disagrees (error: %v)\n ours: %s\n gmsl: %s", err, r.describeAll(resolved), r.describeAll(gmsl))
		}
	}
	return nil
}

// gomatrixserverlibV2 resolves the sets with gomatrixserverlib's v2, given
// the state sets and their auth chains as it wants them.
func gomatrixserverlibV2(ctx context.Context, room *testroom.Room, sets [][]gomatrixserverlib.PDU) (resolved []gomatrixserverlib.PDU, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	known, err := stateAndAuthChains(ctx, sets, room.AuthChain)
	if err != nil {
		return nil, err
	}
	resolved, err = gomatrixserverlib.ResolveConflictsNew(room.Version(), sets, known, UserIDForSender, room.IsRejected)
	sortByKey(resolved)
	return resolved, err
}

func (r *scenarioRun) describeAll(events []gomatrixserverlib.PDU) string {
	var parts []string
	for _, ev := range events {
		parts = append(parts, r.describe(ev))
	}
	return strings.Join(parts, ", ")
}

func unconflictedIn(sets [][]gomatrixserverlib.PDU) map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU {
	u, _ := splitV2(sets)
	return u
}

func eventIDs(events []gomatrixserverlib.PDU) []string {
	ids := make([]string, len(events))
	for i, ev := range events {
		ids[i] = ev.EventID()
	}
	return ids
}
