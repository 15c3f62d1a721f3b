#!/usr/bin/env python3
"""`coordinator parallel` against GNU parallel, the oracle.

Each row of TABLE is a bash snippet in which $P is the program: it runs once with
P="parallel" (GNU parallel, Debian's) and once with P="COORDINATOR parallel", each in a fresh
directory, and both runs must give the same stdout, byte for byte, and the same exit status.
The rest are checks of our own: options we do not take exit 2 naming them.

Usage: parallel_oracle_test.py [-v] [unittest args]; TASKFARM_COORDINATOR names the coordinator.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

COORDINATOR = os.environ.get("TASKFARM_COORDINATOR", "coordinator")


# The feeders' wait: for a file, at most five seconds.
WAIT = "w() { for i in $(seq 100); do [ -e $1 ] && return; sleep 0.05; done; echo gave-up-$1; }; "

# A job's wait (in its own shell): for the file `seen`, at most five seconds.
JOB_WAIT = "for i in $(seq 100); do [ -e seen ] && break; sleep 0.05; done; [ -e seen ] || echo gave-up"

# (name, snippet). Order-sensitive rows use -k or -j1.
TABLE = [
    ("one source", "$P -k echo ::: a b c"),
    ("two sources: every combination", "$P -k echo ::: a b ::: 1 2"),
    ("positional", "$P -k echo {2}-{1} ::: a b ::: 1 2"),
    ("--link wraps the shorter", "$P -k --link echo {1}-{2} ::: a b c ::: 1 2"),
    (":::+ links", "$P -k echo {1}-{2} ::: a b :::+ 1 2"),
    ("::::", "printf 'x\\ny\\n' > f; $P -k echo :::: f"),
    ("::::+", "printf 'x\\ny\\n' > f; printf '1\\n2\\n' > g; $P -k echo {1}{2} :::: f ::::+ g"),
    ("::: then ::::", "printf 'x\\ny\\n' > f; $P -k echo {1}{2} ::: a b :::: f"),
    ("stdin", "printf 'a\\nb\\n' | $P -k echo"),
    (":::: - is stdin", "printf 'a\\nb\\n' | $P -k echo {1}{2} :::: - ::: x"),
    ("-a", "printf 'a\\nb\\n' > f; $P -k -a f echo"),
    ("two -a", "printf 'a\\nb\\n' > f; printf '1\\n' > g; $P -k -a f -a g echo {2}{1}"),
    ("{.}", "$P -k echo {.} ::: dir/x.tar.gz .bashrc a.b/c x. .a.b /x/.y"),
    ("{/} {//} {/.}", "$P -k echo {/} {//} {/.} ::: dir/sub/x.tar.gz x /top"),
    ("{#}", "$P -k echo {#} {} ::: a b c"),
    ("{#} alone", "$P -k echo {#} ::: a b"),
    ("{%} with one slot", "$P -j1 echo {%} ::: a b"),
    ("{2.} {-1} {1/}", "$P -k echo {2.} {-1} {1/} ::: a/b.c ::: d.e f"),
    ("{} twice", "$P -k echo {} {} ::: a"),
    ("--colsep", "$P -k --colsep , echo {2} {1} ::: a,b c,d"),
    ("--colsep {}", "$P -k --colsep , echo {} ::: a,b"),
    ("--colsep tab file", "printf 'a\\tb\\nc\\td\\n' > f; $P -k --colsep '\\t' echo {2}:{1} :::: f"),
    ("--header :", "$P -k --header : echo {x}-{y} ::: x 1 2 ::: y 3 4"),
    ("--header : --colsep", "printf 'n,m\\n1,2\\n' | $P -k --header : --colsep , echo {m}{n}"),
    ("--header : --colsep: names untrimmed", "printf 'n , m\\n1,2\\n' | $P -k --header : --colsep , echo '[{m}]' '[{ m}]'"),
    # --colsep is Perl's split(/REGEX/, $value, -1), columns trimmed unless --trim says otherwise.
    ("--colsep trims", "$P -k --colsep , echo '[{1}]' '[{2}]' ::: ' a , b ' ' ,c'"),
    ("--colsep keeps empty columns", "$P -k --colsep , echo '[{1}]' '[{-1}]' '[{2}]' ::: a,b, ,a a,,b"),
    ("--colsep a regex", "$P -k --colsep '\\s*[;|]\\s*' echo '[{1}]' '[{2}]' '[{3}]' ::: 'a ; b|c' 'x'"),
    ("--colsep Perl classes", "$P -k --colsep '\\d+' echo {3}{2}{1} ::: a1b22c"),
    ("--colsep a group is a column", "$P -k --colsep '([,;])' echo {1} {2} {3} {4} ::: 'a;b' 'c,d'"),
    ("--colsep an empty match", "$P -k --colsep 'x*' echo '[{1}]' '[{2}]' '[{3}]' '[{-1}]' ::: abc axxb"),
    ("--colsep '' splits between characters", "$P -k --colsep '' echo {3}{2}{1} ::: abc"),
    ("--colsep lookahead", "$P -k --colsep '(?=[A-Z])' echo {2} {1} ::: fooBar"),
    ("--colsep alternation, first wins", "$P -k --colsep 'a|ab' echo '[{1}]' '[{2}]' ::: xaby"),
    ("--colsep an option at its start", "$P -k --colsep '(?i)x' echo {2}{1} ::: aXb cxd"),
    ("-k keeps order", "$P -j3 -k 'sleep 0.{}; echo {}' ::: 3 1 2"),
    ("-j N%", "$P -j 200% -k echo ::: a b"),
    ("-j +N", "$P -j +1 -k echo ::: a b"),
    ("-j -N", "$P -j -1 -k echo ::: a b"),
    ("-j0", "$P -j0 -k echo ::: a b"),
    ("-j0 while the input still comes", "(printf 'a\\nb\\n'; sleep 0.3; printf 'c\\n') | $P -j0 -k echo"),
    ("-j0 slow jobs on input still coming", "(printf 'a\\nb\\n'; sleep 0.3; printf 'c\\n') | $P -j0 'sleep 1; echo {}' | sort"),
    ("-j2 bundled", "$P -kj2 echo ::: a b"),
    ("--jobs=", "$P --jobs=2 -k echo ::: a b"),
    ("--dry-run quoting", "$P -k --dry-run echo ::: 'a b' \"it's\" '$x' plain-1.x/y '' '~' 'a=b'"),
    ("--dry-run {#}", "$P --dry-run -k echo {}.{#} ::: a b"),
    ("--tag", "$P -k --tag echo ::: a 'b c'"),
    ("--tag two sources", "$P -k --tag echo ::: a b ::: 1"),
    ("--tagstring", "$P -k --tagstring 'x{}y' echo ::: a b"),
    ("--tag stderr", "$P -k --tag 'echo e{} >&2' ::: a 2>&1"),
    ("-N2 positional", "$P -k -N2 echo {1}-{2} ::: a b c"),
    ("-N2", "$P -k -N2 echo ::: a b c d"),
    ("-n1", "$P -k -n1 echo ::: a b"),
    ("-X context", "$P -j1 -X echo pre-{}-post ::: 1 2 3"),
    ("-m", "$P -j1 -m echo pre-{}-post ::: 1 2 3"),
    ("-X spreads over slots", "$P -j2 -kX echo ::: 1 2 3 4 5"),
    ("-X {#}", "$P -j2 -kX echo {#} {} ::: 1 2 3 4"),
    ("-0 stdin", "printf 'a b\\0c\\nd\\0' | $P -0 -k echo '[{}]'"),
    ("--null file", "printf 'a\\0b\\0' > f; $P --null -k echo :::: f"),
    ("every line verbatim", "printf 'a\\n\\n#c\\n d \\n' | $P -k echo '[{}]'"),
    ("last line without newline", "printf 'a\\nb' | $P -k echo"),
    ("--halt now,fail=1", "$P -j1 --halt now,fail=1 'echo {}; exit {}' ::: 0 3 0"),
    ("--halt soon,fail=1", "$P -j1 --halt soon,fail=1 'echo {}; exit {}' ::: 0 4 0"),
    ("--halt now,success=1", "$P -j1 --halt now,success=1 'echo {}; exit {}' ::: 3 0 4"),
    ("--halt now,fail=50%", "$P -j1 --halt now,fail=50% 'echo {}; exit {}' ::: 1 0 2 0"),
    ("--halt now,fail=30%", "$P -j1 --halt now,fail=30% 'echo {}; exit {}' ::: 1 0 2 0 0 0"),
    ("--halt soon,fail=2", "$P -j1 --halt soon,fail=2 'echo {}; exit {}' ::: 1 3 0"),
    # a fails after b has surely started (both workers up), and b is still running then.
    ("--halt soon lets the running job finish",
     "$P -k -j2 --halt soon,fail=1 'if [ {} = a ]; then sleep 0.4; exit 1; fi; sleep 1; echo done {}' ::: a b"),
    ("--halt 2", "$P -j1 --halt 2 'echo {}; exit {}' ::: 0 5 0"),
    ("exit status: failed jobs", "$P -j1 'echo {}; exit {}' ::: 0 3 4"),
    ("--joblog", "$P -k --joblog jl 'echo {}; exit {}' ::: 0 2; cut -f1,2,5,6,7,8,9 jl"),
    ("--joblog - is stdout", "$P -k -j1 --joblog - 'echo {}' ::: a b | cut -f1,7,8; test ! -e ./- && echo no-file"),
    ("--results tree",
     "$P -k --results rr echo ::: a 'b c' ::: x >/dev/null; find rr -type f | sort; cat rr/1/a/2/x/stdout rr/1/a/2/x/seq"),
    ("--retries: output of the last try", "$P -k --retries 3 'echo try; exit 1' ::: x"),
    ("--retries: tries in all",
     "$P -j1 --retries 3 'echo {} >> log; [ $(wc -l < log) -ge 2 ]' ::: a; cat log"),
    ("--retries 1 is one try", "$P -j1 --retries 1 'echo {} >> log; exit 1' ::: a; cat log"),
    ("--group", "$P -k --group echo ::: a b"),
    ("quoting: in double quotes", "$P -k echo '\"v={}\"' ::: 'a b' x"),
    ("quoting: arithmetic", "$P -k echo '$(( {} * 2 ))' ::: 3 4"),
    ("quoting: hostile inputs stay data",
     "$P -k echo ::: '$(touch pwned)' 'a;b' '*' '`id`' \"'\"; ls pwned 2>&1 | wc -l"),
    ("-q", "$P -q -k echo 'a  b' ::: x"),
    ("-v", "$P -kv echo ::: a b"),
    ("stderr apart", "$P -k 'echo out{}; echo err{} >&2' ::: a b 2>/dev/null"),
    ("--timeout", "$P -k --timeout 1 'sleep {}; echo {}' ::: 0 5"),
    ("a source with no value", "$P -k echo ::: a ::: "),
    ("a first source with no value", "$P -k echo ::: ::: a"),
    ("stdout then stderr", "$P -k 'echo out{}; echo err{} >&2' ::: a b 2>&1"),
    ("no input", "$P -k echo :::"),
    ("--", "$P -k -- echo ::: a"),
    # A job's output whole and byte for byte: over --max-output, on stdout and stderr, binary.
    ("output over a megabyte", "seq 400000 > big; $P cat ::: big | cksum"),
    ("stderr over a megabyte", "seq 400000 > big; $P 'cat {} >&2' ::: big 2>&1 >/dev/null | cksum"),
    ("big outputs in order", "seq 300000 > big; $P -k -j2 cat ::: big big | cksum"),
    ("binary output", "printf 'a\\377b\\000c\\351' > s; $P -k cat ::: s s | od -An -c"),
    ("gzip -c", "seq 1000 > s; $P gzip -c ::: s | gzip -dc | cksum"),
    ("--tag binary output", "printf 'x\\377\\n' > s; $P -k --tag cat ::: s | od -An -c"),
    # Inputs that are not UTF-8, byte for byte.
    ("input not UTF-8", "$P -k echo ::: $'caf\\xe9' x | od -An -c"),
    ("stdin not UTF-8", "printf 'caf\\351\\n\\377\\n' | $P -k echo '[{}]' | od -An -c"),
    ("--tag with input not UTF-8", "$P -k --tag echo ::: $'\\xff' | od -An -c"),
    ("--results with input not UTF-8",
     "$P --results rr echo ::: $'\\xe9' >/dev/null; cat rr/1/*/stdout | od -An -c"),
    # Options users type often.
    ("-n2 -X", "$P -j1 -n2 -X echo ::: 1 2 3 4 5"),
    ("-n2 -m", "$P -j1 -n2 -m echo ::: 1 2 3"),
    ("-I", "$P -k -I ,, echo ',,-{}-{.}' ::: a.b"),
    ("-I appended", "$P -k -I ,, echo ::: a b"),
    ("-r", "printf 'a\\n\\n  \\nb\\n' | $P -r -k echo '[{}]'"),
    ("-r in every source", "$P -r -k echo '[{1}{2}]' ::: '' a ' ' ::: '' b"),
    ("--trim lr", "printf ' a \\n b\\n' | $P --trim lr -k echo '[{}]'"),
    ("--trim r --colsep", "printf ' a , b \\n' | $P --trim r --colsep , -k echo '[{1}]' '[{2}]'"),
    ("--wd", "mkdir d; $P --wd d 'basename $(pwd)' ::: 1"),
    ("--env", "x=v $P --env x -k 'echo $x {}' ::: a"),
    # --halt's exit status and messages, the joblog of a signal, a timeout's warning.
    ("--halt soon,fail=50%", "$P -j1 --halt soon,fail=50% 'echo {}; exit {}' ::: 1 0 2 0"),
    ("--halt now,fail=50% of two: the job's status", "$P -j1 --halt now,fail=50% 'echo {}; exit {}' ::: 0 3"),
    ("--halt now,fail=34%", "$P -j1 --halt now,fail=34% 'echo {}; exit {}' ::: 0 5 0"),
    ("--halt now,done=2", "$P -j1 --halt now,done=2 'echo {}; exit {}' ::: 4 0 1"),
    ("--halt names each job that counts", "$P -j1 --halt soon,fail=50% 'echo {}; exit {}' ::: 1 0 2 0 2>&1"),
    ("--halt done names every job", "$P -j1 --halt now,done=2 'echo {}; exit {}' ::: 4 0 1 2>&1"),
    ("--joblog of a signal", "$P --joblog jl 'kill -9 $$' ::: a; cut -f7,8 jl"),
    ("--timeout warns", "$P -k --timeout 1 'sleep {}; echo {}' ::: 0 5 2>&1"),
    # A command has 0, 1 and 2, and nothing of ours (ls's own listing is the 3).
    ("no stray descriptor in a command", "$P -k 'ls /proc/self/fd; : {}' ::: a b"),
    ("--pipe: none either", "echo x | $P --pipe 'cat >/dev/null; ls /proc/self/fd'"),
    # --pipe: each job's stdin a chunk.
    ("--pipe", "seq 300000 | $P --pipe -k wc -l"),
    ("--pipe --block", "seq 300000 | $P --pipe --block 100k -k wc -c"),
    ("--pipe --block 1M", "seq 400000 | $P --pipe --block 1M -k wc -l"),
    ("--pipe {#}", "seq 10 | $P --pipe --block 6 -k 'echo {#}; cat'"),
    ("--pipe --recstart", "printf '>a\\nx\\n>b\\ny\\n>c\\n' | $P --pipe --block 5 --recstart '>' -k 'echo [; cat'"),
    ("--pipe --recend", "printf 'a;b;c;d;' | $P --pipe --block 3 --recend ';' -k 'cat; echo'"),
    ("--pipe: a record longer than a block", "printf 'aaaaaaaaaa\\nb\\n' | $P --pipe --block 4 -k 'cat; echo .'"),
    ("--pipe -N", "seq 10 | $P --pipe -N3 -k 'echo [; cat'"),
    ("--pipe -N over blocks", "seq 20 | $P --pipe -N3 --block 4 -k 'echo [; cat'"),
    ("--pipe -N many", "seq 100000 | $P --pipe -N 7000 -k wc -l"),
    ("--pipe -N --recend", "printf 'a;b;c;d;e' | $P --pipe -N2 --recend ';' -k 'cat; echo'"),
    ("--pipe -r", "printf 'a\\n\\n \\n\\t\\nb\\n\\n' | $P --pipe -r --block 2 -k 'cat; echo .'"),
    ("--pipe -r over blocks", "seq 30000 | sed 's/5/\\n/' | $P --pipe -r --block 10k -k wc -l"),
    ("--pipe -r, nothing left", "printf '\\n \\n' | $P --pipe -r -k 'echo x; cat'"),
    ("--pipe with no input", "printf '' | $P --pipe -k 'echo x; cat'"),
    # The value forms parallel's man page gives for the options taken.
    ("--halt N% is soon,fail=N%", "$P -j1 --halt 10% 'echo {}; exit {}' ::: 0 1 2 0 0 0 0 0 0 0"),
    ("--halt N% never reached", "$P -j1 --halt 50% 'echo {}; exit {}' ::: 0 1 2 0 0 0 0 0 0 0"),
    ("--halt 1% of ten jobs", "$P -j1 --halt 1% 'echo {}; exit {}' ::: 0 1 2 0 0 0 0 0 0 0"),
    ("--halt -1 is soon,success=1", "$P -j1 --halt -1 'echo {}; exit {}' ::: 1 0 2"),
    ("--halt -2 is now,success=1", "$P -j1 --halt -2 'echo {}; exit {}' ::: 1 0 2"),
    ("--halt 0", "$P -j1 --halt 0 'echo {}; exit {}' ::: 1 0 2"),
    ("--halt never", "$P -j1 --halt never 'echo {}; exit {}' ::: 1 0 2"),
    ("--halt now,fail=0", "$P -j1 --halt now,fail=0 'echo {}; exit {}' ::: 0 1 2"),
    ("--halt now,fail=0%", "$P -j1 --halt now,fail=0% 'echo {}; exit {}' ::: 0 1 2"),
    ("--halt now,fail=150%", "$P -j1 --halt now,fail=150% 'echo {}; exit {}' ::: 0 1 2 0"),
    ("--halt soon,success=50%", "$P -j1 --halt soon,success=50% 'echo {}; exit {}' ::: 0 1 0 0 0"),
    ("--halt now=fail=1", "$P -j1 --halt now=fail=1 'echo {}; exit {}' ::: 0 3 0"),
    ("--halt now,done=50%", "$P -j1 --halt now,done=50% 'echo {}; exit {}' ::: 4 0 1 0"),
    ("--pipe -N0 is by the block", "seq 2000 | $P --pipe -N0 -k wc -c"),
    ("--pipe -N 0", "seq 2000 | $P --pipe -N 0 -k wc -c"),
    ("--pipe --block 0 is 1M", "seq 300000 | $P --pipe --block 0 -k wc -c"),
    ("--pipe --block '' is 1M", "seq 300000 | $P --pipe --block '' -k wc -c"),
    ("--pipe --block 1.5k", "seq 2000 | $P --pipe --block 1.5k -k wc -c"),
    ("--pipe --block 0.5k", "seq 2000 | $P --pipe --block 0.5k -k wc -c"),
    ("--pipe --block 2.7", "seq 5 | $P --pipe --block 2.7 -k 'cat; echo .'"),
    ("--pipe --block 1.5M", "seq 400000 | $P --pipe --block 1.5M -k wc -c"),
    ("--pipe --block 1K", "seq 2000 | $P --pipe --block 1K -k wc -c"),
    ("--pipe --block 1Ki", "seq 2000 | $P --pipe --block 1Ki -k wc -c"),
    ("--pipe --block 1ki", "seq 2000 | $P --pipe --block 1ki -k wc -c"),
    ("--pipe --block 1k", "seq 2000 | $P --pipe --block 1k -k wc -c"),
    ("--pipe --block -1 exits 255", "seq 20 | $P --pipe --block -1 -k wc -c"),
    ("--pipe --block 0.1 exits 255", "seq 20 | $P --pipe --block 0.1 -k wc -c"),
    ("-N0: no argument", "$P -k -N0 echo foo ::: 1 2 3"),
    ("-n0", "$P -k -n0 echo foo ::: 1 2"),
    ("-N0 {#}", "$P -k -N0 echo foo {#} ::: 1 2 3"),
    ("-N0 {}", "$P -k -N0 echo foo {} ::: 1 2 3"),
    ("-N0 -X", "$P -k -N0 -X echo a{}b ::: 1 2 3"),
    ("-N0 --tag", "$P -k -N0 --tag echo x ::: 1 2"),
    ("-N0 --dry-run", "$P -k -N0 --dry-run echo foo ::: 1 2"),
    ("-N0 -m", "$P -k -N0 -m echo a{}b ::: 1 2 3"),
    ("-N0 -X -j1, a word after", "$P -k -j1 -N0 -X echo a{}b c ::: 1 2 3"),
    (":::+ stops at the shortest", "$P -k echo {1}{2} ::: a b c :::+ 1 2"),
    (":::+ then :::", "$P -k echo {1}{2}{3} ::: a b c :::+ 1 2 3 4 ::: x y"),
    ("-j N.N%", "$P -j 50.5% -k echo ::: a b"),
    ("-j 1%", "$P -j 1% echo {%} ::: a"),
    ("-j 02", "$P -j 02 -k echo ::: a b"),
    ("--timeout 0 is none", "$P -k --timeout 0 'sleep 0.2; echo {}' ::: a"),
    ("--timeout with units", "$P -k --timeout 1s 'sleep {}; echo {}' ::: 0 5"),
    ("--timeout 1m", "$P -k --timeout 1m 'echo {}' ::: a"),
    ("--timeout 0.5m1s", "$P -k --timeout 0.5m1s 'echo {}' ::: a"),
    ("--joblog +FILE appends, no header", "$P --joblog +jl echo ::: a; $P --joblog +jl echo ::: b; cut -f1,7,9 jl"),
    # --delay, --resume, --resume-failed.
    # -X, -m: a command line of many arguments is cut at the length a shell command may have.
    ("-X cuts long command lines", "seq 60000 | $P -X -k echo | awk '{n+=NF} length>131072{b=1} END{print n, b+0}'"),
    ("-m cuts long command lines", "seq 60000 | $P -m -k echo | awk '{n+=NF} length>131072{b=1} END{print n, b+0}'"),
    ("-X with a word around {}", "seq 60000 | $P -X -k echo a{}b | awk '{n+=NF} length>131072{b=1} END{print n, b+0}'"),
    ("--tagstring {%} is the slot", "$P -j1 -k --tagstring 'slot{%}-{}' echo ::: a b"),
    ("--tagstring {%} with two slots", "$P -j2 --tagstring '{%}' 'echo {%}' ::: a b c d | awk '$1 != $2'"),
    ("--delay", "$P -k --delay 0.1 echo ::: a b c"),
    ("--delay 0.1s", "$P -k --delay 0.1s echo ::: a b"),
    # Starts a second apart however slowly the workers come up (so half a second is safe).
    ("--delay spaces the starts",
     "$P -j2 --delay 1 'date +%s.%N; : {}' ::: 1 2 | sort | awk 'NR==1{a=$1} NR==2{print ($1-a >= 0.5)}'"),
    ("--resume-failed runs the failed jobs with the command as now given",
     "$P -k --joblog jl 'echo {}; exit {}' ::: 0 1 2 0; $P -k --resume-failed --joblog jl 'echo fixed {}' "
     "::: 0 1 2 0 3; cut -f1,7,9 jl"),
    ("--resume skips every job in the joblog",
     "$P -k --joblog jl 'echo {}; exit {}' ::: 0 1; $P -k --resume --joblog jl 'echo again {}' ::: 0 1 2; "
     "cut -f1,7,9 jl"),
    ("--resume without a joblog yet", "$P -k --resume --joblog jl echo ::: a b; cut -f1,7,9 jl"),
    ("--resume-failed {#} keeps its number", "$P -k --joblog jl 'exit {}' ::: 0 1 0; "
     "$P -k --resume-failed --joblog jl echo {#} {} ::: 0 1 0"),
    ("--resume-failed with -k and --pipe",
     "seq 6 | $P -j1 --pipe -N2 --joblog jl 'grep -q 3'; "
     "seq 6 | $P -j1 -k --pipe -N2 --resume-failed --joblog jl cat"),
    # --line-buffer, --ungroup: a job's output is out as it comes (the reader downstream
    # makes the file that the job waits for once it has read the first line).
    ("--line-buffer: a line is out before its job ends",
     "$P --line-buffer 'echo one; " + JOB_WAIT + "; echo two; : {}' ::: a | (read x; touch seen; echo $x; cat)"),
    ("--lb --tag", "$P --lb --tag 'echo one; " + JOB_WAIT + "; echo two' ::: a | (read x; touch seen; echo $x; cat)"),
    ("-u: bytes are out before the job ends",
     "$P -u 'echo one; " + JOB_WAIT + "; printf two; : {}' ::: a | (read x; touch seen; echo $x; cat)"),
    ("--ungroup -v", "$P --ungroup -v 'echo one; " + JOB_WAIT + "; : {}' ::: a | (read x; touch seen; echo $x; cat)"),
    ("--line-buffer: a last line without newline", "$P -j1 --line-buffer 'printf {}' ::: a b"),
    ("--line-buffer -k: in order", "$P -j2 -k --line-buffer 'sleep 0.{}; echo {}; echo e{} >&2' ::: 3 1 2>&1"),
    ("--line-buffer: stderr", "$P -j1 --line-buffer 'echo o{}; echo e{} >&2' ::: a b 2>&1 >/dev/null"),
    ("--line-buffer: output over a megabyte", "seq 400000 > big; $P --line-buffer cat ::: big | cksum"),
    ("--line-buffer --joblog", "$P -j1 --lb --joblog jl 'echo {}; exit {}' ::: 0 2; cut -f1,7,9 jl"),
    # Jobs start as their input comes: the feeder waits for a file that the first job makes
    # before it gives the rest (it gives up after five seconds, and says so).
    ("stdin: the first job runs before the input ends",
     WAIT + "(echo a; w a.done; echo b) | $P -k 'touch {}.done; echo {}'"),
    # -X fills a command to its length limit and runs it while more values come (30,000 values
    # are more than one command holds).
    ("-X: the first job runs before the input ends",
     WAIT + "exec 3>&1; (seq 30000; w seen >/dev/null; [ -e seen ] && echo streamed >&3) | "
     "$P -j1 -X 'touch seen; :' >/dev/null"),
    ("a :::: FIFO: the first job runs before the input ends",
     WAIT + "mkfifo f; $P -k 'touch {1}{2}.done; echo {1}{2}' :::: f ::: 1 & exec 3>f; echo a >&3; w a1.done; "
     "echo b >&3; w b1.done; exec 3>&-; wait"),
    ("--pipe: the first chunk runs before the input ends",
     WAIT + "(echo a; w a.done; echo b) | $P --pipe --block 2 -N1 -k 'read x; touch $x.done; echo $x'"),
    ("tail -f queue | parallel",
     WAIT + ": > q; (tail -n +1 -f q & echo $! > tail.pid; wait) | $P -k 'echo {}; touch {}.done' & "
     "echo a >> q; w a.done; echo b >> q; w b.done; kill $(cat tail.pid); wait"),
    ("stdin: a line begun does not hold back the job before it",
     WAIT + "(printf 'a\\nb'; w a.done; printf '\\nc\\n') | $P -k 'touch {}.done; echo {}'"),
    ("--pipe: a block begun does not hold back the chunk before it",
     WAIT + "(printf 'a\\nb'; w a.done; printf '\\n') | $P --pipe --block 2 -N1 -k 'read x; touch $x.done; echo $x'"),
    ("-0 on stdin as it comes", WAIT + "(printf 'a\\0'; w a.done; printf 'b\\0') | $P -0 -k 'touch {}.done; echo {}'"),
    ("--header : on stdin as it comes",
     WAIT + "(echo h; echo a; w a.done; echo b) | $P --header : -k 'touch {h}.done; echo {h}'"),
    ("stdin first, ::: after", "printf 'a\\nb\\n' | $P -k echo {1}{2} :::: - ::: x y"),
    ("-r on stdin as it comes", "printf '\\n \\na\\n\\nb\\n' | $P -r -k echo '[{}]'"),
    ("stdin empty, ::: with values", "printf '' | $P -k echo '[{1}|{2}]' :::: - ::: x"),
    ("stdin linked to ::: after", "printf 'a\\nb\\nc\\n' | $P -k echo {1}{2} :::: - :::+ x y"),
]



def run(snippet, program, directory, env):
    result = subprocess.run(["bash", "-c", snippet], cwd=directory, capture_output=True, timeout=60,
                            env=dict(env, P=program))
    return result.returncode, result.stdout, result.stderr


class ParallelOracle(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not shutil.which("parallel"):
            raise unittest.SkipTest("GNU parallel is not installed")
        cls.home = tempfile.mkdtemp(prefix="parallel-oracle-home-")
        # GNU parallel's citation notice and its files stay in a home of the test's own.
        os.makedirs(os.path.join(cls.home, ".parallel"))
        open(os.path.join(cls.home, ".parallel", "will-cite"), "w").close()
        cls.env = dict(os.environ, HOME=cls.home, PARALLEL_HOME=os.path.join(cls.home, ".parallel"), LC_ALL="C")
        cls.env.pop("PARALLEL", None)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.home, ignore_errors=True)

    def both(self, snippet):
        with tempfile.TemporaryDirectory() as theirs, tempfile.TemporaryDirectory() as ours:
            with ThreadPoolExecutor(2) as pool:
                a = pool.submit(run, snippet, "parallel", theirs, self.env)
                b = pool.submit(run, snippet, f"{COORDINATOR} parallel", ours, self.env)
                return a.result(), b.result()

    def test_table(self):
        self.assertGreaterEqual(len(TABLE), 40)
        with ThreadPoolExecutor(3) as pool:
            outcomes = list(pool.map(lambda row: (row, self.both(row[1])), TABLE))
        for (name, snippet), (theirs, ours) in outcomes:
            with self.subTest(name, snippet=snippet):
                self.assertEqual(ours[1], theirs[1], f"stdout differs; our stderr: {ours[2]!r}")
                self.assertEqual(ours[0], theirs[0], f"exit status differs; our stderr: {ours[2]!r}")

    def test_an_option_it_does_not_take_exits_2_naming_it(self):
        for option in ["--bar", "--retry-failed", "-S", "--memfree", "--pipepart", "--eta", "--roundrobin", "--shuf"]:
            with self.subTest(option):
                result = subprocess.run([COORDINATOR, "parallel", option, "1", "echo", ":::", "a"],
                                        capture_output=True, text=True, timeout=30)
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn(option, result.stderr)
                self.assertEqual(result.stdout, "")
                # An installed copy has no docs/: the message says what to do instead.
                self.assertNotIn("docs/", result.stderr)

    def test_a_perl_expression_is_refused_saying_what_to_use(self):
        result = subprocess.run([COORDINATOR, "parallel", "echo", "{= s/a/b/ =}", ":::", "a"], capture_output=True,
                                text=True, timeout=30)
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("{= perl expression =} is not supported", result.stderr)
        self.assertEqual(result.stdout, "")

    def test_a_bad_value_exits_2_naming_the_option(self):
        for args in [["-j", "x"], ["-j", "0%"], ["-j", "1.5"], ["--halt", "later"], ["--halt", "3"],
                     ["--halt", "now"], ["--halt", "now,fail=1.5"], ["-N", "-1"], ["--header", "x"], ["--colsep", "("],
                     ["--colsep", "a{2,1}"], ["--colsep", "(?<=a+)b"],
                     ["--block", "1x"], ["--block", "1KB"], ["--trim", "x"], ["--wd", "/no/such/dir"], ["-I", ""],
                     ["--timeout", "10%"], ["--timeout", "-1"], ["--delay", "x"], ["--delay", "1auto"],
                     ["--retries", "x"], ["--retries", "0"], ["--results", "o.csv"], ["--results", "r/{}"],
                     ["--resume", "--joblog", "-"]]:
            with self.subTest(args):
                result = subprocess.run([COORDINATOR, "parallel", *args, "echo", ":::", "a"], capture_output=True,
                                        text=True, timeout=30)
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn(args[0], result.stderr)

    def test_no_command_gets_the_plan_file(self):
        # Each command lists where its descriptors above 2 lead: never to the plan, a file
        # with no name in TMPDIR.
        listing = "for f in /proc/self/fd/*; do [ ${f##*/} -gt 2 ] && readlink $f; done; : {}"
        with tempfile.TemporaryDirectory() as tmpdir:
            result = subprocess.run([COORDINATOR, "parallel", "-j2", "-k", listing, ":::", "a", "b"],
                                    capture_output=True, text=True, timeout=30, env=dict(os.environ, TMPDIR=tmpdir))
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertFalse([link for link in result.stdout.splitlines() if link.startswith(tmpdir)], result.stdout)


    def test_an_inherited_input_descriptor_never_reaches_a_command(self):
        # `:::: <(...)` is a descriptor the run inherits: each command lists where its
        # descriptors above 2 lead, and none may be that pipe.
        listing = "for f in /proc/self/fd/*; do [ ${f##*/} -gt 2 ] && readlink $f; done; : {}"
        read_end, write_end = os.pipe()
        os.set_inheritable(read_end, True)
        os.write(write_end, b"a\nb\n")
        os.close(write_end)
        pipe_link = os.readlink(f"/proc/self/fd/{read_end}")
        try:
            result = subprocess.run([COORDINATOR, "parallel", "-j2", "-k", listing, "::::", f"/dev/fd/{read_end}"],
                                    capture_output=True, text=True, timeout=30, pass_fds=(read_end,))
        finally:
            os.close(read_end)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn(pipe_link, result.stdout.split("\n"))


class CommandInputs(unittest.TestCase):
    """--command's inputs: the descriptor a list comes on never reaches a command."""

    def test_the_inputs_descriptor_never_reaches_a_command(self):
        # Each command lists where its descriptors above 2 lead; none may be the list's.
        listing = "for f in /proc/self/fd/*; do [ ${f##*/} -gt 2 ] && readlink $f; done; : {}"
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "inputs")
            with open(path, "w") as f:
                f.write("a\nb\nc\n")
            file_fd = os.open(path, os.O_RDONLY)  # inheritable, as a shell's `3< inputs` is
            read_end, write_end = os.pipe()  # as `<(...)` gives a list
            os.set_inheritable(read_end, True)
            os.write(write_end, b"a\nb\nc\n")
            os.close(write_end)
            pipe_link = os.readlink(f"/proc/self/fd/{read_end}")
            try:
                for fd, leads_to in [(file_fd, path), (read_end, pipe_link)]:
                    with self.subTest(leads_to):
                        result = subprocess.run(
                            [COORDINATOR, "--command", listing, "--inputs", f"/dev/fd/{fd}", "--workers", "2",
                             "--mode", "sequential,threads,processes"],
                            capture_output=True, text=True, timeout=60, pass_fds=(fd,))
                        self.assertEqual(result.returncode, 0, result.stderr)
                        links = result.stdout.split("\n")
                        self.assertNotIn(leads_to, links)
                        self.assertFalse([link for link in links if "taskfarm-stdin" in link], result.stdout)
            finally:
                os.close(file_fd)
                os.close(read_end)

    def test_every_line_is_an_input_as_it_is(self):
        result = subprocess.run([COORDINATOR, "--command", "printf '[%s]\\n'", "--inputs", "-", "--workers", "2"],
                                input="a\n\n#c\n d \n", capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sorted(result.stdout.splitlines()), sorted(["[a]", "[]", "[#c]", "[ d ]"]))

    def test_plain_output_comes_whole_and_byte_exact(self):
        # Over --max-output, and not UTF-8: through a file of the run's temporary directory.
        with tempfile.TemporaryDirectory() as directory:
            data = os.path.join(directory, "data")
            with open(data, "wb") as f:
                f.write(bytes(range(256)) * 2000)
            for mode in ["processes", "threads"]:
                with self.subTest(mode):
                    result = subprocess.run(
                        [COORDINATOR, "--command", "cat {}", "--inputs", "-", "--max-output", "1K", "--mode", mode],
                        input=(data + "\n").encode(), capture_output=True, timeout=60,
                        env=dict(os.environ, TMPDIR=directory))
                    self.assertEqual(result.returncode, 0, result.stderr)
                    self.assertTrue(result.stdout == bytes(range(256)) * 2000, len(result.stdout))
                    self.assertEqual(sorted(os.listdir(directory)), ["data"])  # nothing left behind


JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


class ValuesAreScanned(unittest.TestCase):
    """Values and joblog lines are read by scanning, never std::regex (which recursed once a
    character: a long value was a stack overflow, SIGSEGV) nor std::sto* (whose out_of_range
    was exit 1): a malformed one is exit 2 naming the option or FILE:LINE."""

    def parallel(self, *args, directory=None):
        return subprocess.run([COORDINATOR, "parallel", *args], capture_output=True, text=True, timeout=60,
                              cwd=directory)

    def test_a_malformed_joblog_line_is_exit_2_naming_file_and_line(self):
        with tempfile.TemporaryDirectory() as directory:
            for name, line in [("a 30-digit Seq", "1" * 30 + "\t:\t1.0\t0.1\t0\t0\t0\t0\techo a"),
                               ("a long line without tabs", "1 " + "x" * 1_000_000),
                               ("a field that is no number", "1\t:\tx\t0.1\t0\t0\t0\t0\techo a")]:
                for flag in ["--resume", "--resume-failed"]:
                    with self.subTest(name, flag=flag):
                        with open(os.path.join(directory, "jl"), "w") as f:
                            f.write(JOBLOG_HEADER + "1\t:\t1.0\t0.1\t0\t0\t0\t0\techo a\n" + line + "\n")
                        result = self.parallel(flag, "--joblog", "jl", "echo", ":::", "a", directory=directory)
                        self.assertEqual(result.returncode, 2, result.stderr[:300])
                        self.assertIn("jl:3:", result.stderr)
                        self.assertEqual(result.stdout, "")

    def test_a_long_joblog_line_is_read(self):
        with tempfile.TemporaryDirectory() as directory:
            with open(os.path.join(directory, "jl"), "w") as f:
                f.write(JOBLOG_HEADER + "1\t:\t1.0\t0.1\t0\t0\t0\t0\techo " + "a\tb" * 500_000 + "\n")
            result = self.parallel("-k", "--resume-failed", "--joblog", "jl", "echo", ":::", "a", "b",
                                   directory=directory)
            self.assertEqual(result.returncode, 0, result.stderr[:300])
            self.assertEqual(result.stdout, "b\n")

    def test_a_long_or_huge_value_is_exit_2_naming_its_option(self):
        digits = "1" * 100_000
        for args in [["--delay", digits], ["--timeout", digits + "s"], ["-j", digits + "%"], ["--block", digits],
                     ["--halt", "now,fail=" + digits], ["--halt", digits + "%"], ["-j", "1" * 30]]:
            with self.subTest(args[0], length=len(args[1])):
                result = self.parallel(*args, "echo", ":::", "a")
                self.assertIn(result.returncode, (0, 2), result.stderr[:300])
                if result.returncode == 2:
                    self.assertIn(args[0], result.stderr)
        # A position past a long's range: exit 2 naming it, not exit 1.
        result = self.parallel("echo", "{" + "9" * 30 + "}", ":::", "a")
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("9" * 30, result.stderr)

    def test_a_backtracking_colsep_on_a_huge_line_neither_crashes_nor_hangs(self):
        # std::regex recursed once a character: SIGSEGV. PCRE2 backtracks on the heap under a
        # limit: the split is made, or exit 2 naming --colsep.
        with tempfile.TemporaryDirectory() as directory:
            with open(os.path.join(directory, "in"), "w") as f:
                f.write("a" * 1_000_000 + "\n")
            for pattern in ["(a|aa)*b", "(a|aa)*$", "(a*)*[bc]", "(?:a|a)+,"]:
                with self.subTest(pattern):
                    result = self.parallel("-k", "--colsep", pattern, "echo", "{1}", "::::", "in",
                                           directory=directory)
                    self.assertIn(result.returncode, (0, 2), result.stderr[:300])
                    if result.returncode == 2:
                        self.assertIn("--colsep", result.stderr)
                        self.assertEqual(result.stdout, "")
                    else:
                        self.assertLessEqual(len(result.stdout), 1_000_001)
        # The header's names are split by the same matcher.
        with tempfile.TemporaryDirectory() as directory:
            with open(os.path.join(directory, "in"), "w") as f:
                f.write("a" * 1_000_000 + "\n1\n")
            result = self.parallel("--header", ":", "--colsep", "(a|aa)*b", "echo", "::::", "in", directory=directory)
            self.assertIn(result.returncode, (0, 2), result.stderr[:300])
            if result.returncode == 2:
                self.assertIn("--colsep", result.stderr)

    def test_a_colsep_slow_at_every_position_stops_naming_the_value(self):
        # PCRE2's step limit is per start position: just under it at each of a million positions
        # was half a minute of matching. The run's matching time is bounded too (decision 274).
        with tempfile.TemporaryDirectory() as directory:
            with open(os.path.join(directory, "in"), "w") as f:
                f.write("x\n" + "a" * 1_000_000 + "b\n")
            result = self.parallel("-k", "--colsep", "(a|aa){1,12}b", "echo", "{1}", "::::", "in",
                                   directory=directory)
            self.assertEqual(result.returncode, 2, result.stderr[:300])
            self.assertIn("--colsep: '(a|aa){1,12}b'", result.stderr)
            self.assertIn("the value of job 2 \"aaaa", result.stderr)
            self.assertIn("more than the", result.stderr)
            # The header's names are split by the same matcher, under the same budget.
            result = self.parallel("--header", ":", "--colsep", "(a|aa){1,12}b", "echo", "::::", "in",
                                   directory=directory)
            self.assertEqual(result.returncode, 2, result.stderr[:300])
            self.assertIn("the value of job 1", result.stderr)

    def test_a_fixed_colsep_splits_a_long_line(self):
        with tempfile.TemporaryDirectory() as directory:
            with open(os.path.join(directory, "in"), "w") as f:
                f.write(" " * 1_000_000 + "\tb\n")
            result = self.parallel("--colsep", "\\t", "echo", "{2}", "::::", "in", directory=directory)
            self.assertEqual(result.returncode, 0, result.stderr[:300])
            self.assertEqual(result.stdout, "b\n")


def processes_with(marker):
    """The pids of live processes (not zombies) whose environment holds `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker.encode() in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            pass
    return found


def command_line(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


class SlotPerJob(unittest.TestCase):
    """-j 0 while the input still comes: a worker for each job that waits, as parallel runs a
    job for each, not 64 (or 1,024) idle ones for a 3-line input (decision 275)."""

    def test_three_lines_on_an_open_input_start_three_workers_that_run_at_once(self):
        tmp = tempfile.mkdtemp(prefix="parallel-j0-")
        marker = f"TMPDIR={tmp}"
        run = subprocess.Popen([COORDINATOR, "parallel", "-j0", "-k", "touch {}; sleep 30; echo {%}"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp,
                               env=dict(os.environ, TMPDIR=tmp))
        try:
            run.stdin.write(b"a\nb\nc\n")
            run.stdin.flush()  # and kept open: the input is still coming
            for _ in range(600):  # until the three jobs run, each in its own worker
                if all(os.path.exists(os.path.join(tmp, name)) for name in "abc"):
                    break
                time.sleep(0.05)
            workers = [pid for pid in processes_with(marker) if comm(pid) == "worker"]
            self.assertEqual(len(workers), 3, [command_line(pid).rstrip(b"\0")[:20] for pid in workers])
        finally:
            for pid in processes_with(marker):
                if command_line(pid).startswith(b"sleep\0"):
                    os.kill(pid, signal.SIGKILL)  # the jobs end now, each with its slot
            out, err = run.communicate(timeout=60)
            for pid in processes_with(marker):
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(tmp, ignore_errors=True)
        # Each job's shell goes on after its sleep is killed: each says its own slot.
        self.assertEqual(run.returncode, 0, err)
        self.assertEqual(sorted(out.split()), [b"1", b"2", b"3"])


class Interrupted(unittest.TestCase):
    """`coordinator parallel` cut short, as users do it: its reader gone (`| head -1`), or
    Ctrl-C. It exits without running the rest, and nothing it started is left: every process
    of the run (workers, guardians, commands) has TMPDIR set to a directory of the test's."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="parallel-interrupted-")
        self.marker = f"TMPDIR={self.tmp}"
        self.env = dict(os.environ, TMPDIR=self.tmp)

    def tearDown(self):
        for pid in processes_with(self.marker):  # what a failure left
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def assert_none_left(self):
        self.assertEqual(processes_with(self.marker), [])

    def test_a_closed_pipe_ends_the_run_and_leaves_no_process(self):
        # Jobs 1 and 2 write at once; the other 38 take 30 s each on 2 slots, 10 minutes in all.
        result = subprocess.run(
            ["bash", "-c",
             f"{COORDINATOR} parallel -j2 'echo {{}}; seq 100000; [ {{}} -le 2 ] || sleep 30' ::: $(seq 40) | head -1"],
            capture_output=True, text=True, timeout=60, env=self.env)
        self.assertEqual(result.stdout, "1\n" if result.stdout.startswith("1") else "2\n")
        self.assert_none_left()

    def test_ctrl_c_ends_the_run_and_leaves_no_process(self):
        run = subprocess.Popen([COORDINATOR, "parallel", "-j2", "sleep 30; echo {}", ":::", *map(str, range(40))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, start_new_session=True)
        try:
            # Until both commands run (sleep's environment has the marker too).
            for _ in range(600):
                sleeps = [pid for pid in processes_with(self.marker) if command_line(pid).startswith(b"sleep\0")]
                if len(sleeps) == 2:
                    break
                time.sleep(0.05)
            self.assertEqual(len(sleeps), 2)
            os.killpg(run.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the foreground group
            out, err = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        self.assertEqual(run.returncode, 130, err)
        self.assertEqual(out, b"")
        self.assert_none_left()


if __name__ == "__main__":
    unittest.main()
