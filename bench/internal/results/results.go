// Package results is the format of bench/results.json and its meta file, shared by the
// bench command that writes them and the report command that reads them.
package results

// Row is one line of results.json: value of subject against baseline_value of the
// baseline, measured in the same run; goal bounds the ratio (from above for costs,
// from below for throughputs) and pass says whether it holds. Rows without a goal are
// context.
type Row struct {
	Scenario      string   `json:"scenario"`
	Subject       string   `json:"subject"`
	Baseline      string   `json:"baseline"`
	Metric        string   `json:"metric"`
	Unit          string   `json:"unit"`
	Value         float64  `json:"value"`
	BaselineValue float64  `json:"baseline_value"`
	Ratio         float64  `json:"ratio"`
	Goal          *float64 `json:"goal"`
	Pass          *bool    `json:"pass"`
}

// Meta describes a run.
type Meta struct {
	Date string `json:"date"`
	// Commit is the agent's commit the run measured (git describe; "-dirty" when the
	// work tree had changes).
	Commit    string `json:"commit"`
	Mode      string `json:"mode"`
	GoVersion string `json:"go_version"`
	CPU       string `json:"cpu"`
	Cores     int    `json:"cores"`
	Kernel    string `json:"kernel"`
	Seconds   int    `json:"seconds"`
	Skipped   string `json:"skipped,omitempty"`
}
