package searchapi

import (
	"strings"
	"unicode"
)

// Limits on a search term.
const (
	maxSearchTermLength = 1000 // bytes
	maxSearchWords      = 32
)

// searchWords splits a search term into lower-case words: runs of
// letters, digits and combining marks, as the full text tokenizers see
// them. Everything else (quotes, *, -, parentheses, colons) separates
// words, so no query syntax survives. Words after the first
// maxSearchWords are dropped.
func searchWords(term string) []string {
	fields := strings.FieldsFunc(strings.ToLower(term), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsNumber(r) && !unicode.IsMark(r)
	})
	if len(fields) > maxSearchWords {
		fields = fields[:maxSearchWords]
	}
	return fields
}
