package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/prober"
)

// stateFile is where the agent keeps what must survive its own restart.
const stateFile = "state.json"

// Saving is coalesced: a change marks the state dirty, and one goroutine writes it at
// most every saveEvery, off the agent's lock, and once more on shutdown. A failed write
// is tried again after saveRetry, doubling up to saveRetryMax, until one succeeds.
const (
	saveEvery    = 200 * time.Millisecond
	saveRetry    = time.Second
	saveRetryMax = 30 * time.Second
)

// savedState is the agent's memory across restarts, keyed by container name.
type savedState struct {
	Version    int                       `json:"version"`
	Containers map[string]savedContainer `json:"containers"`
}

type savedContainer struct {
	Instance     string        `json:"instance"`
	RestartCount int           `json:"restart_count"`
	Started      bool          `json:"started"`
	Ready        bool          `json:"ready"`
	LastExitCode *int          `json:"last_exit_code,omitempty"`
	BackoffDelay time.Duration `json:"backoff_delay"`
	BackoffLast  time.Time     `json:"backoff_last"`
}

func emptyState() savedState { return savedState{Version: 1, Containers: map[string]savedContainer{}} }

// loadState reads the saved state; a missing file is an empty state. A value of the
// wrong type costs that field, a container that is not an object costs that
// container; problems lists what was dropped. Only a file that is not JSON at all is
// lost as a whole.
func loadState(dir string) (s savedState, problems []string, err error) {
	s = emptyState()
	path := filepath.Join(dir, stateFile)
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return s, nil, nil
	}
	if err != nil {
		return s, nil, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return s, nil, fmt.Errorf("%s: %w (starting without saved state)", path, err)
	}
	var ctrs map[string]json.RawMessage
	if raw, ok := top["containers"]; ok {
		if err := json.Unmarshal(raw, &ctrs); err != nil {
			problems = append(problems, "containers: "+err.Error())
		}
	}
	for name, raw := range ctrs {
		sc, bad := decodeContainer(raw)
		for _, p := range bad {
			problems = append(problems, "containers["+name+"]"+p)
		}
		if sc != nil {
			s.Containers[name] = *sc
		}
	}
	return s, problems, nil
}

// decodeContainer decodes one saved container field by field, so that a bad field
// costs only itself; nil means the value is not an object at all.
func decodeContainer(raw json.RawMessage) (*savedContainer, []string) {
	var sc savedContainer
	if json.Unmarshal(raw, &sc) == nil {
		return &sc, nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, []string{": " + err.Error()}
	}
	sc = savedContainer{}
	var problems []string
	v := reflect.ValueOf(&sc).Elem()
	for i := range v.NumField() {
		key, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("json"), ",")
		f, ok := fields[key]
		if !ok {
			continue
		}
		if err := json.Unmarshal(f, v.Field(i).Addr().Interface()); err != nil {
			v.Field(i).SetZero()
			problems = append(problems, "."+key+": "+err.Error())
		}
	}
	return &sc, problems
}

// writeState replaces the state file atomically: a complete new file is synced and
// renamed over the old one, so a crash leaves either the old or the new state.
func writeState(dir string, data []byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, stateFile+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFile)); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// snapshot builds the state to save; called with a.mu held.
func (a *Agent) snapshot() savedState {
	s := emptyState()
	for name, cs := range a.ctrs {
		started, ready, _ := a.probeReadiness(cs) // the GPU is looked at again after a restart
		delay, last := cs.backoff.State()
		s.Containers[name] = savedContainer{Instance: cs.instance, RestartCount: cs.restarts, Started: started,
			Ready: ready, LastExitCode: cs.lastExit, BackoffDelay: delay, BackoffLast: last}
	}
	return s
}

// persist marks the state changed; the saver writes it. Called with a.mu held.
func (a *Agent) persist() {
	if a.opts.StateDir == "" {
		return
	}
	a.dirty = true
	select {
	case a.saveNow <- struct{}{}:
	default:
	}
}

// saver writes the state whenever it changed, at most every saveEvery, until stop is
// closed; then it returns, and shutdown writes the last state itself.
func (a *Agent) saver(stop <-chan struct{}) {
	var last time.Time
	retry := saveRetry
	var retryC <-chan time.Time
	for {
		select {
		case <-stop:
			return
		case <-a.saveNow:
		case <-retryC:
		}
		if wait := saveEvery - time.Since(last); wait > 0 {
			select {
			case <-stop:
				return
			case <-time.After(wait):
			}
		}
		last = time.Now()
		if err := a.save(); err != nil {
			retryC = time.After(retry)
			retry = min(2*retry, saveRetryMax)
			continue
		}
		retryC, retry = nil, saveRetry
	}
}

// save writes the state if it is dirty; a failure leaves it dirty and is logged once
// per run of failures.
func (a *Agent) save() error {
	a.mu.Lock()
	if !a.dirty {
		a.mu.Unlock()
		return nil
	}
	snap := a.snapshot()
	a.dirty = false
	a.mu.Unlock()
	data, err := json.MarshalIndent(snap, "", "  ")
	if err == nil && string(data) == a.lastSaved {
		return nil
	}
	if err == nil {
		err = writeState(a.opts.StateDir, data)
	}
	if err != nil {
		a.mu.Lock()
		a.dirty = true
		a.mu.Unlock()
		if !a.saveFailing {
			a.log.Error("cannot save state; retrying until it works", zap.String("state_dir", a.opts.StateDir), zap.Error(err))
		}
		a.saveFailing = true
		return err
	}
	if a.saveFailing {
		a.log.Info("state saved again", zap.String("state_dir", a.opts.StateDir))
	}
	a.saveFailing = false
	a.lastSaved = string(data)
	a.saves.Add(1)
	return nil
}

// restoreFor returns the probe state to restore for a container instance found running.
func (a *Agent) restoreFor(name, instance string) *prober.Restore {
	sc, ok := a.saved.Containers[name]
	if !ok || sc.Instance != instance {
		return nil
	}
	r := &prober.Restore{Started: sc.Started, Readiness: prober.ValueFailure}
	if sc.Ready {
		r.Readiness = prober.ValueSuccess
	}
	return r
}

// restoreSaved reads what the previous agent left in the state dir, if there is one.
func (a *Agent) restoreSaved() {
	if a.opts.StateDir == "" {
		return
	}
	saved, problems, err := loadState(a.opts.StateDir)
	if err != nil {
		a.log.Error("cannot read saved state", zap.Error(err))
	}
	if len(problems) > 0 {
		a.log.Warn("saved state partly unreadable; those values start afresh", zap.Strings("dropped", problems))
	}
	a.saved = saved
}
