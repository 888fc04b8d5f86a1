"""tests/warm_python.py's server runs code as a fresh process would, but for torch's import."""

import subprocess

import pytest

pytestmark = pytest.mark.xdist_group("warm_python")


def test_a_run_has_its_own_namespace_folder_environment_and_status(warm, tmp_path):
    proc = warm.run(code="x = 1\nprint(x)", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "1\n")
    forgot = warm.run(code="print(x)\ntorch.zeros(1)", cwd=tmp_path)
    assert forgot.returncode == 1 and "NameError: name 'x' is not defined" in forgot.stderr
    proc = warm.run(code="import os, sys; print(os.getcwd(), os.environ.get('ONLY_HERE'), "
                         "sys.argv[1:]); sys.exit(3)", args=("a",), cwd=tmp_path,
                    env={"ONLY_HERE": "yes"})
    assert (proc.returncode, proc.stdout) == (3, f"{tmp_path} yes ['a']\n")


def test_nothing_of_lazyadam_is_imported_before_the_run(warm, tmp_path):
    proc = warm.run(code="import sys; print(sorted(m for m in sys.modules "
                         "if m.split('.')[0] == 'lazyadam'), 'torch' in sys.modules)",
                    cwd=tmp_path)
    assert proc.stdout == "[] True\n", proc.stderr


def test_a_script_runs_as_main_with_its_arguments(warm, tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import sys\nif __name__ == '__main__':\n    print(sys.argv[1:])\n"
                      "    raise SystemExit('stopped')\n")
    proc = warm.run(script=script, args=("--steps", "2"), cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "['--steps', '2']\n", "stopped\n")


def test_a_run_past_its_timeout_is_killed_and_the_next_one_runs(warm, tmp_path):
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run(code="import time; time.sleep(60)", cwd=tmp_path, timeout=0.5)
    assert warm.run(code="print('next')", cwd=tmp_path).stdout == "next\n"
