// Command flux-anchor answers, with the real github.com/Masterminds/semver/v3
// library (Debian package, GOPATH import path without /v3), what Flux's
// image-reflector-controller semver ImagePolicy would do.
//
// This is regwatch's own code. It does not vendor or copy Flux: it strings the
// library calls together in the order Flux's controller makes them, as read in
// fluxcd/image-reflector-controller (internal/policy/semver.go,
// internal/controller/imagerepository_controller.go, api/v1 GetExclusionList)
// and fluxcd/pkg/version (ParseVersion):
//
//  1. Tags come from the registry; any tag matching the default exclusion list
//     (`^.*\.sig$`) is dropped; the rest are sorted in place in descending
//     byte order before they are stored and later handed to the policy.
//  2. A tag counts only if, after removing one leading lower-case "v", it passes
//     semver.StrictNewVersion (so "2.1", "1.2.3.4", "V1.2.3", "21.0.2_13-jdk" are
//     dropped); its value is then semver.NewVersion(tag), Original() = the tag.
//  3. semver.NewConstraint(range).Check(v) filters (Masterminds excludes a
//     pre-release unless the comparator itself names one).
//  4. The first tag, in the order of step 1, that is strictly GreaterThan every
//     earlier survivor wins, so among equal versions (`v1.2.3` vs `1.2.3`) the one
//     sorting first in descending byte order wins.
//
// Usage:
//
//	flux-anchor parse                 < tags   -> TSV: tag, parses, version, prerelease, loose
//	flux-anchor select -range R [-prerelease] < tags -> selected tag (empty line if none)
//	flux-anchor constraint -range R [-prerelease]     -> the Masterminds constraint used
//
// Build (GOPATH mode against Debian's golang-github-masterminds-semver-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o /tmp/flux-anchor ./scripts/anchors/flux
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	// Debian's golang-github-masterminds-semver-dev installs the v3 module
	// (its go.mod says github.com/Masterminds/semver/v3) at
	// /usr/share/gocode/src/github.com/Masterminds/semver, so in GOPATH mode
	// it is imported without the /v3 suffix.
	semver "github.com/Masterminds/semver"
)

var sigExclusion = regexp.MustCompile(`^.*\.sig$`)

// fluxParse: Flux accepts a tag when StrictNewVersion accepts it with one
// leading lower-case "v" removed; the value it then uses is NewVersion(tag).
func fluxParse(tag string) (*semver.Version, error) {
	if _, err := semver.StrictNewVersion(strings.TrimPrefix(tag, "v")); err != nil {
		return nil, err
	}
	return semver.NewVersion(tag)
}

var bareCmp = regexp.MustCompile(`^\s*v?\d`)
var versionTok = regexp.MustCompile(`(\d+(?:\.\d+){0,2})(-[0-9A-Za-z.-]+)?`)

// constraintFor turns the sequences file's range (cargo-style) into the
// Masterminds constraint handed to NewConstraint.
//   - empty range: ">=0.0.0" (or ">=0.0.0-0" when pre-releases are wanted);
//   - a comparator with no operator means caret in cargo ("1.2" == "^1.2"),
//     while Masterminds reads it as "=", so "^" is put in front;
//   - prerelease=true: every version in the range that names no pre-release
//     gets "-0", the Masterminds idiom for "admit pre-releases here".
func constraintFor(r string, pre bool) string {
	r = strings.TrimSpace(r)
	if r == "" || r == "*" {
		if pre {
			return ">=0.0.0-0"
		}
		return ">=0.0.0"
	}
	parts := strings.Split(r, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if bareCmp.MatchString(p) {
			p = "^" + p
		}
		if pre {
			p = versionTok.ReplaceAllStringFunc(p, func(m string) string {
				if strings.Contains(m, "-") {
					return m
				}
				return m + "-0"
			})
		}
		parts[i] = p
	}
	return strings.Join(parts, ", ")
}

func readTags() []string {
	var tags []string
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		t := strings.TrimRight(sc.Text(), "\r")
		if t != "" {
			tags = append(tags, t)
		}
	}
	return tags
}

func tf(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: flux-anchor parse|select|constraint [-range R] [-prerelease]")
		os.Exit(2)
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	rng := fs.String("range", "", "cargo-style range; empty = any")
	pre := fs.Bool("prerelease", false, "admit pre-releases")
	fs.Parse(os.Args[2:])

	switch mode {
	case "parse":
		for _, t := range readTags() {
			loose := "-"
			if lv, err := semver.NewVersion(t); err == nil {
				loose = lv.String()
			}
			v, err := fluxParse(t)
			if err != nil {
				fmt.Printf("%s\tfalse\t-\t-\t%s\n", t, loose)
				continue
			}
			fmt.Printf("%s\ttrue\t%s\t%s\t%s\n", t, v.String(), tf(v.Prerelease() != ""), loose)
		}
	case "constraint":
		fmt.Println(constraintFor(*rng, *pre))
	case "select":
		c, err := semver.NewConstraint(constraintFor(*rng, *pre))
		if err != nil {
			fmt.Fprintln(os.Stderr, "bad constraint:", err)
			os.Exit(2)
		}
		var tags []string
		for _, t := range readTags() {
			if !sigExclusion.MatchString(t) {
				tags = append(tags, t)
			}
		}
		sort.SliceStable(tags, func(i, j int) bool { return tags[i] > tags[j] })
		var best *semver.Version
		for _, t := range tags {
			v, err := fluxParse(t)
			if err != nil {
				continue
			}
			if c.Check(v) && (best == nil || v.GreaterThan(best)) {
				best = v
			}
		}
		if best != nil {
			fmt.Println(best.Original())
		} else {
			fmt.Println()
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", mode)
		os.Exit(2)
	}
}
