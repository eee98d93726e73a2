package pushrules

import (
	"regexp"
	"strings"
)

// glob is a compiled glob pattern (the appendix's "glob-style matching":
// * matches any characters, ? exactly one), matched case-insensitively
// against a whole value or, for content.body, against any substring that
// starts and ends at word boundaries.
type glob struct {
	words bool
	// literal is the lower-cased pattern when it has no wildcards.
	literal   string
	isLiteral bool
	// anything is a whole-value pattern of only stars.
	anything bool
	re       *regexp.Regexp // nil when literal or anything
}

// nonWord is the spec's word boundary character class: anything but
// [A-Za-z0-9_]. It sits outside the case-insensitive group, so that case
// folding cannot make a character such as the Kelvin sign a word
// character.
const nonWord = `[^A-Za-z0-9_]`

func compileGlob(pattern string, words bool) *glob {
	g := &glob{words: words}
	if !strings.ContainsAny(pattern, "*?") {
		g.literal, g.isLiteral = strings.ToLower(pattern), true
		return g
	}
	if !words && strings.Trim(pattern, "*") == "" {
		g.anything = true
		return g
	}
	var b strings.Builder
	for _, r := range pattern {
		switch r {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	expr := `(?s)^(?i:` + b.String() + `)$`
	if words {
		expr = `(?s)(?:^|` + nonWord + `)(?i:` + b.String() + `)(?:` + nonWord + `|$)`
	}
	g.re = regexp.MustCompile(expr) // every rune is quoted: cannot fail
	return g
}

// match matches a value; lower is the value lower-cased, which the caller
// computes once per event for content.body.
func (g *glob) match(value, lower string) bool {
	switch {
	case g.anything:
		return true
	case g.isLiteral && g.words:
		return containsWord(lower, g.literal)
	case g.isLiteral:
		return strings.EqualFold(value, g.literal)
	}
	return g.re.MatchString(value)
}

// containsWord reports whether word occurs in text starting and ending at
// word boundaries. Both are lower-cased already. An empty word matches
// nothing.
func containsWord(text, word string) bool {
	if word == "" {
		return false
	}
	for from := 0; from <= len(text)-len(word); {
		i := strings.Index(text[from:], word)
		if i < 0 {
			return false
		}
		start := from + i
		end := start + len(word)
		if (start == 0 || !isWordByte(text[start-1])) && (end == len(text) || !isWordByte(text[end])) {
			return true
		}
		from = start + 1
	}
	return false
}

// isWordByte reports whether b is in [A-Za-z0-9_]. Bytes of multi-byte
// UTF-8 characters are not: every such character is a boundary.
func isWordByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_'
}
