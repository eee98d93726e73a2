package userdirectory

import (
	"strings"
	"unicode"
)

// Limits on what is matched.
const (
	maxTermLength = 256 // bytes of search_term
	maxTermWords  = 8
	maxUserWords  = 32 // words kept per user
	maxWordLength = 64 // bytes per stored word
)

// words splits text into lower-case runs of letters, digits and marks.
// Punctuation (including '@', ':', '.', '_' and the LIKE wildcards '%'
// and '_') separates words, so a word is never a pattern.
func words(text string) []string {
	return strings.FieldsFunc(strings.ToLower(text), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsNumber(r) && !unicode.IsMark(r)
	})
}

// userWords are the words a user is found by: those of the display name
// and of the user ID (localpart and server name), without repeats.
func userWords(userID, displayName string) []string {
	var out []string
	seen := map[string]bool{}
	for _, w := range append(words(displayName), words(userID)...) {
		if len(w) > maxWordLength {
			w = strings.ToValidUTF8(w[:maxWordLength], "")
		}
		if !seen[w] && len(out) < maxUserWords {
			seen[w] = true
			out = append(out, w)
		}
	}
	return out
}

// termWords are the words of a search term; each must begin a word of a
// user for the user to match.
func termWords(term string) []string {
	w := words(term)
	if len(w) > maxTermWords {
		w = w[:maxTermWords]
	}
	for i := range w { // as stored
		if len(w[i]) > maxWordLength {
			w[i] = strings.ToValidUTF8(w[i][:maxWordLength], "")
		}
	}
	return w
}
