"""source: the ELF vmcore being dumped.

Segments and page-frame ranges read lazily and bounds-checked (vmcore), the
slow page-by-page read of memory that may not be readable (careful), the
kernel's VMCOREINFO (vmcoreinfo), kernel virtual memory through the page
tables (kvmem), and the ELF head a join rebuilds (elfhead).
"""
