#pragma once
// How the console outputs behave, as the command line chooses.

namespace taskfarm {

// --output: a type's output block (TaskType::output: a program's stdout and stderr, say) under
// its task's line as it is (Group), each line starting with "task ID" (Tag, like GNU parallel's
// --tag), or none. Plain: a task's stdout alone on stdout and its stderr on stderr, as GNU
// parallel prints them, the lines of failed tasks (with no blocks) and the table on stderr.
enum class OutputBlocks { Group, Tag, None, Plain };

// --progress: auto draws the bar only where stderr is a terminal whose TERM is not dumb,
// and logs a progress line every few seconds elsewhere; always draws it; never does neither.
enum class ProgressMode { Auto, Always, Never };

}  // namespace taskfarm
