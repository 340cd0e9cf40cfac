# Sourced by test.sh: the dashboard's browser tests drive Debian's Chromium (tests/test_dashboard_browser.py).
# Installed here when it is missing and this can (root with apt-get); otherwise the tests say why they skip
# (and fail under CI=true, where they must run).
if [ -z "${CHROMIUM_PATH:-}" ] && ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    mkdir -p logs
    echo "Installing Chromium for the dashboard's browser tests (apt-get install chromium, a minute or two; log: logs/chromium-install.log)..."
    if (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) \
        >logs/chromium-install.log 2>&1; then
      echo "Chromium installed: $(chromium --version 2>/dev/null | head -n 1)"
    else
      echo "Could not install Chromium (see logs/chromium-install.log): the browser tests will be skipped, or fail under CI=true."
    fi
  else
    echo "Chromium is not installed and cannot be installed here (needs root and apt-get): the dashboard's browser tests"
    echo "will be skipped (under CI=true they fail). To run them: sudo apt-get install chromium"
  fi
fi
