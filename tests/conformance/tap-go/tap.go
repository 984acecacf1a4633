// Package tap writes Test Anything Protocol (version 13) output: the subset of the
// github.com/mndrix/tap-go API that the OCI runtime-tools validation suite calls.
// Written for sandbox-vm's conformance harness (tests/conformance); it is built in
// place of that package, which Debian does not ship.
package tap

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strings"
)

// T numbers and prints test points. A T from Todo shares the numbering of its parent.
type T struct {
	next *int
	out  io.Writer
	todo bool
}

// New returns a T that writes to standard output, numbering from 1.
func New() *T {
	n := 1
	return &T{next: &n, out: os.Stdout}
}

// Header prints the version line and, when count is positive, the plan.
func (t *T) Header(count int) {
	fmt.Fprintln(t.out, "TAP version 13")
	if count > 0 {
		fmt.Fprintf(t.out, "1..%d\n", count)
	}
}

// Ok prints one test point that passed when ok is true.
func (t *T) Ok(ok bool, description string) {
	word := "ok"
	if !ok {
		word = "not ok"
	}
	line := fmt.Sprintf("%s %d - %s", word, *t.next, oneLine(description))
	if t.todo {
		line += " # TODO"
	}
	fmt.Fprintln(t.out, line)
	*t.next++
}

// Pass prints a passing test point.
func (t *T) Pass(description string) { t.Ok(true, description) }

// Fail prints a failing test point.
func (t *T) Fail(description string) { t.Ok(false, description) }

// Skip prints count passing test points marked as skipped, with the reason.
func (t *T) Skip(count int, description string) {
	for i := 0; i < count; i++ {
		fmt.Fprintf(t.out, "ok %d # SKIP %s\n", *t.next, oneLine(description))
		*t.next++
	}
}

// Todo returns a T whose test points are marked TODO (failures there do not count).
func (t *T) Todo() *T {
	return &T{next: t.next, out: t.out, todo: true}
}

// Count is the number of test points printed so far.
func (t *T) Count() int { return *t.next - 1 }

// AutoPlan prints the plan after the fact: as many tests as were printed.
func (t *T) AutoPlan() {
	fmt.Fprintf(t.out, "1..%d\n", t.Count())
}

// Diagnostic prints message as comment lines.
func (t *T) Diagnostic(message string) {
	for _, l := range strings.Split(strings.TrimRight(message, "\n"), "\n") {
		fmt.Fprintf(t.out, "# %s\n", l)
	}
}

// Diagnosticf is Diagnostic with a format.
func (t *T) Diagnosticf(format string, args ...interface{}) {
	t.Diagnostic(fmt.Sprintf(format, args...))
}

// YAML prints value as an indented YAML block after the last test point. Maps become
// one key per line (sorted), multi-line strings literal blocks; anything else is written
// in JSON, which YAML reads as flow style.
func (t *T) YAML(value interface{}) error {
	var b strings.Builder
	b.WriteString("  ---\n")
	v := reflect.ValueOf(value)
	if v.Kind() == reflect.Map {
		keys := make([]string, 0, v.Len())
		vals := map[string]interface{}{}
		for _, k := range v.MapKeys() {
			s := fmt.Sprint(k.Interface())
			keys = append(keys, s)
			vals[s] = v.MapIndex(k).Interface()
		}
		sort.Strings(keys)
		for _, k := range keys {
			if err := writeEntry(&b, k, vals[k]); err != nil {
				return err
			}
		}
	} else {
		j, err := json.Marshal(value)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "  %s\n", j)
	}
	b.WriteString("  ...\n")
	_, err := io.WriteString(t.out, b.String())
	return err
}

// writeEntry writes `key: value` at the block's indentation.
func writeEntry(b *strings.Builder, key string, value interface{}) error {
	k, err := json.Marshal(key)
	if err != nil {
		return err
	}
	if s, ok := value.(string); ok && strings.Contains(s, "\n") {
		fmt.Fprintf(b, "  %s: |-\n", k)
		for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
			fmt.Fprintf(b, "    %s\n", l)
		}
		return nil
	}
	j, err := json.Marshal(value)
	if err != nil {
		return err
	}
	fmt.Fprintf(b, "  %s: %s\n", k, j)
	return nil
}

// oneLine keeps a description on its test point's line.
func oneLine(s string) string {
	return strings.ReplaceAll(s, "\n", " ")
}
