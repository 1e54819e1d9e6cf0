#!/usr/bin/env bash
# The main job, as a person would run it: a workspace (a git repository), one experiment with
# its human section filled, checked, run on the embedded corpus, and shown.
# Rerunnable: demo/ is recreated each time. DEMO_STEPS=N shortens the run (CI uses it).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
demo="${DEMO_DIR:-$here/demo}"
export EXP_ROOT="$demo"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

rm -rf "$demo"
step exp init "$demo"
cd "$demo"
git init -q && git add -A && git -c user.name=demo -c user.email=demo@localhost commit -qm "exp workspace"
step exp new 0.1.0 --desc "CPU demo: MiniMind-style LM on the embedded poetry and quotes corpus"

# The human's part: goal, hypothesis, expected results, focus (normally typed in an editor).
python - <<'PY'
from pathlib import Path
from expkit.record import Record

path = Path("experiment/experiment_0.1.0.md")
record = Record.read(path)
record.set_human("goal", "在 CPU 上验证最小的 MiniMind 式语言模型能在两分钟内从内置语料中学到东西。")
record.set_human(
    "hypothesis",
    "隐藏层 128、2 层、序列 128、批 16、学习率 3e-3 并带预热时，训练损失会从约 8.8（ln 6400）稳定下降到 5.5 以下。",
)
record.set_human(
    "expected",
    "损失应明显下降，且验证集与训练集接近：\n"
    "- final_loss < 5.5\n"
    "- val_loss < 6.0\n"
    "- tokens_per_s >= 1000  # 2 核 CPU 上的最低吞吐\n",
)
record.set_human("focus", "前 100 步的损失与梯度范数是否平稳；最后的中英文生成样本是否像诗句或格言。")
path.write_text(record.render(), encoding="utf-8")
print("filled the human sections of", path)
PY

if [ -n "${DEMO_STEPS:-}" ]; then
  half=$(( DEMO_STEPS / 2 > 0 ? DEMO_STEPS / 2 : 1 ))
  step exp set 0.1.0 "max_steps=$DEMO_STEPS" "warmup_steps=$(( DEMO_STEPS / 10 ))" "eval_interval=$half" "save_interval=$half"
fi
step exp check 0.1.0
step exp run 0.1.0          # a finished run analyses itself: verdicts, anomalies, plots, drafts
step exp show 0.1.0
step exp tree
step exp report

out="$demo/out/experiment_0.1.0"
printf '\nRecord:   %s\nScript:   %s\nOutputs:  %s/  (metrics.jsonl, summary.json, analysis.json, train.log)\n' \
  "$demo/experiment/experiment_0.1.0.md" "$demo/run_file/experiment_0.1.0.sh" "$out"
printf 'Plots:    %s\n' "$out"/plots/*.png
printf 'Report:   %s\nSamples:  %s\n' "$demo/experiment/EXPERIMENT_REPORT.md" "$out/samples.json"
python - "$out/samples.json" <<'PY'
import json, sys

data = json.load(open(sys.argv[1], encoding="utf-8"))
for sample in data["samples"]:  # each prompt greedy, then sampled
    print(f"  {sample['prompt']!r} ({sample['mode']}) → {sample['completion'][:80]!r}")
PY
cat <<EOF

The AI assistant now refines the analysis (exp context 0.1.0 --json, exp fill 0.1.0 analysis --file F).
Then a person reviews it at a terminal, and commits it once approved:
  cd $demo && exp review 0.1.0
EOF
