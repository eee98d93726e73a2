package accounts

import (
	"context"
	"strconv"
	"strings"
)

// LocalProfile is an active local user's profile, as the user directory
// shows it.
type LocalProfile struct {
	Localpart, DisplayName, AvatarURL string
}

// SearchProfiles returns up to limit active local users, by localpart,
// for whom every word begins the localpart or a space-separated word of
// the display name. Words must be lower case and hold no LIKE wildcards
// (the user directory's words never do). lower() folds only ASCII on
// SQLite, so there other letters match only in the case they are stored.
func (a *Accounts) SearchProfiles(ctx context.Context, words []string, limit int) ([]LocalProfile, error) {
	var q strings.Builder
	q.WriteString(`SELECT p.localpart, p.display_name, p.avatar_url
		FROM accounts_profiles p JOIN accounts_users u ON u.localpart = p.localpart WHERE NOT u.deactivated`)
	args := []any{}
	for _, w := range words {
		n := len(args)
		q.WriteString(" AND (lower(p.localpart) LIKE $" + strconv.Itoa(n+1) +
			" OR lower(p.display_name) LIKE $" + strconv.Itoa(n+1) + " OR lower(p.display_name) LIKE $" + strconv.Itoa(n+2) + ")")
		args = append(args, w+"%", "% "+w+"%")
	}
	q.WriteString(" ORDER BY p.localpart LIMIT $" + strconv.Itoa(len(args)+1))
	args = append(args, limit)
	rows, err := a.db.Reader().QueryContext(ctx, q.String(), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []LocalProfile
	for rows.Next() {
		var p LocalProfile
		if err := rows.Scan(&p.Localpart, &p.DisplayName, &p.AvatarURL); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}
