#!/usr/bin/env bash
# Install (first time) and start the dashboard on http://127.0.0.1:8501
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/streamlit run apps/explorer.py --server.address 127.0.0.1 --server.headless true "$@"
