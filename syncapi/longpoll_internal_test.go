package syncapi

import "testing"

// A panic in the database work reaches the request's goroutine, where the
// server's middleware turns it into a 500, instead of killing the server.
func TestOffStackPassesPanics(t *testing.T) {
	defer func() {
		if p := recover(); p != "boom" {
			t.Fatalf("recovered %v, want boom", p)
		}
	}()
	offStack(func() { panic("boom") })
	t.Fatal("offStack returned after a panic")
}

func TestOffStackRuns(t *testing.T) {
	ran := false
	offStack(func() { ran = true })
	if !ran {
		t.Fatal("fn did not run")
	}
}
