package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/plexus-chat/plexus/mediaapi"
	"github.com/plexus-chat/plexus/storage"
)

// mediaCommand is "plexus media quarantine|unquarantine|delete MXC": it
// works on the database and media folder directly, beside a running
// server or without one.
func mediaCommand(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("media needs an action: quarantine, unquarantine or delete, then an mxc:// URI")
	}
	action, args := args[0], args[1:]
	fs, c := newFlags("media "+action, stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("media %s needs one mxc:// URI", action)
	}
	server, id, err := mediaapi.ParseMXC(fs.Arg(0))
	if err != nil {
		return err
	}
	cfg, err := c.loadConfig(stderr)
	if err != nil {
		return err
	}
	ctx := context.Background()
	db, err := storage.Open(cfg.DatabaseConn())
	if err != nil {
		return err
	}
	defer db.Close()
	media, err := mediaapi.New(ctx, cfg, db)
	if err != nil {
		return err
	}
	defer media.Close()
	var found bool
	switch action {
	case "quarantine", "unquarantine":
		found, err = media.Quarantine(ctx, server, id, action == "quarantine")
	case "delete":
		found, err = media.Delete(ctx, server, id)
	default:
		return fmt.Errorf("unknown media action %q (quarantine, unquarantine, delete)", action)
	}
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%s is not known here", fs.Arg(0))
	}
	fmt.Fprintf(stdout, "%s: %sd\n", fs.Arg(0), action)
	return nil
}
