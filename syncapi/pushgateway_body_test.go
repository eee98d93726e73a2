package syncapi

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/tidwall/gjson"
)

func TestPushTweaksAndNotify(t *testing.T) {
	for _, c := range []struct {
		actions string
		notify  bool
		tweaks  string
	}{
		{`["notify"]`, true, `{}`},
		{`["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}]`, true, `{"highlight":true,"sound":"default"}`},
		{`["notify",{"set_tweak":"highlight","value":false}]`, true, `{"highlight":false}`},
		{`[{"set_tweak":"sound","value":"ping"}]`, false, `{"sound":"ping"}`},
		{`["dont_notify"]`, false, `{}`},
		{`[{"set_tweak":""},{"set_tweak":5},"coalesce","notify"]`, true, `{}`},
	} {
		a := gjson.Parse(c.actions)
		if got := hasNotify(a); got != c.notify {
			t.Errorf("%s: notify %v, want %v", c.actions, got, c.notify)
		}
		got, _ := json.Marshal(tweaksOf(a))
		if string(got) != c.tweaks {
			t.Errorf("%s: tweaks %s, want %s", c.actions, got, c.tweaks)
		}
	}
}

func TestPushPrio(t *testing.T) {
	bob := "@bob:x"
	for _, c := range []struct {
		name      string
		highlight bool
		tweaks    map[string]any
		ev        pushEventInfo
		want      string
	}{
		{"message", false, nil, pushEventInfo{evType: "m.room.message"}, "high"},
		{"encrypted", false, nil, pushEventInfo{evType: "m.room.encrypted"}, "high"},
		{"highlighted reaction", true, nil, pushEventInfo{evType: "m.reaction"}, "high"},
		{"sound", false, map[string]any{"sound": "default"}, pushEventInfo{evType: "org.custom"}, "high"},
		{"custom event", false, nil, pushEventInfo{evType: "org.custom"}, "low"},
		{"invite of the user", false, nil, pushEventInfo{evType: "m.room.member", stateKey: bob, isState: true,
			json: `{"content":{"membership":"invite"}}`}, "high"},
		{"someone else's join", false, nil, pushEventInfo{evType: "m.room.member", stateKey: "@carol:x", isState: true,
			json: `{"content":{"membership":"join"}}`}, "low"},
	} {
		if got := prioOf(pushNotification{userID: bob, highlight: c.highlight}, &c.ev, c.tweaks); got != c.want {
			t.Errorf("%s: prio %s, want %s", c.name, got, c.want)
		}
	}
}

func TestPushBody(t *testing.T) {
	job := &pushJob{key: pusherKey{userID: "@bob:x", appID: "app", pushKey: "key"}, deadline: time.Now(),
		full:        map[string]any{"event_id": "$e", "room_id": "!r", "type": "m.room.message", "counts": map[string]any{"unread": 3}},
		eventIDOnly: map[string]any{"event_id": "$e", "room_id": "!r", "counts": map[string]any{"unread": 3}},
		tweaks:      map[string]any{"sound": "default"}}
	body, err := pushBody(job, `{"url":"https://gw/_matrix/push/v1/notify","extra":{"a":1}}`, 1700000000123)
	if err != nil {
		t.Fatal(err)
	}
	n := gjson.GetBytes(body, "notification")
	if n.Get("type").String() != "m.room.message" || n.Get("devices.0.data.url").Exists() ||
		n.Get("devices.0.data.extra.a").Int() != 1 || n.Get("devices.0.pushkey_ts").Int() != 1700000000 ||
		n.Get("devices.0.tweaks.sound").String() != "default" || n.Get("counts.unread").Int() != 3 {
		t.Fatalf("full body %s", body)
	}
	body, err = pushBody(job, `{"url":"https://gw/_matrix/push/v1/notify","format":"event_id_only"}`, 0)
	if err != nil {
		t.Fatal(err)
	}
	n = gjson.GetBytes(body, "notification")
	if n.Get("type").Exists() || n.Get("event_id").String() != "$e" || n.Get("devices.0.data.format").String() != "event_id_only" {
		t.Fatalf("event_id_only body %s", body)
	}
	// The shared maps are not changed by building a body.
	if _, ok := job.full["devices"]; ok {
		t.Fatal("pushBody wrote into the shared notification")
	}
	if _, err := pushBody(job, `[]`, 0); err == nil {
		t.Fatal("data that is not an object accepted")
	}
}

func TestPushWatermark(t *testing.T) {
	for _, c := range []struct {
		name    string
		pending []pendingPush
		read    int64
		want    int64
		left    int
	}{
		{"nothing pending", nil, 40, 40, 0},
		{"all finished", []pendingPush{{10, 0}, {20, 0}}, 20, 20, 0},
		{"first unfinished", []pendingPush{{10, 1}, {20, 0}}, 20, 9, 2},
		{"a later one unfinished", []pendingPush{{10, 0}, {15, 0}, {20, 2}, {30, 0}}, 30, 19, 2},
	} {
		rest, mark := watermark(c.pending, c.read)
		if mark != c.want || len(rest) != c.left {
			t.Errorf("%s: mark %d with %d left, want %d with %d", c.name, mark, len(rest), c.want, c.left)
		}
	}
}
